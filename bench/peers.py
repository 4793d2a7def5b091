"""The baselines, each run as its own process so it can be pinned like runnerd.

`python -m bench.peers bare --port P`: a bare aiohttp webhook handler, set up like runnerd's
listener (AppRunner, no access log): read the body, parse the JSON, answer 204 with an
X-Request-Id, store nothing. Prints READY once listening; stops on SIGTERM/SIGINT.

`python -m bench.peers huey --db PATH --n N --workers W`: huey's SqliteHuey (its defaults: WAL,
SQLite's default synchronous=FULL) with N no-op tasks enqueued first, then a consumer with W
worker threads; times from the consumer's start until the N-th task completed. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
import uuid


def bare(port: int) -> int:
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        json.loads(body)
        return web.Response(status=204, headers={"X-Request-Id": str(uuid.uuid4())})

    async def serve() -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/webhooks/{name}", handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("READY", flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())
    return 0


def huey_drain(db: str, n: int, workers: int, timeout: float) -> int:
    import logging

    from huey import SqliteHuey
    from huey.signals import SIGNAL_COMPLETE

    logging.getLogger("huey").setLevel(logging.WARNING)
    huey = SqliteHuey("bench", filename=db)

    @huey.task()
    def noop() -> None:
        return None

    t_enq = time.perf_counter()
    for _ in range(n):
        noop()
    enqueue_s = time.perf_counter() - t_enq

    done = threading.Event()
    count = 0
    lock = threading.Lock()
    last = [0.0]

    @huey.signal(SIGNAL_COMPLETE)
    def completed(signal_name: str, task: object, *args: object, **kwargs: object) -> None:
        nonlocal count
        with lock:
            count += 1
            if count >= n:
                last[0] = time.perf_counter()
                done.set()

    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False)
    t0 = time.perf_counter()
    consumer.start()
    finished = done.wait(timeout)
    t1 = last[0] if finished else time.perf_counter()
    consumer.stop(graceful=True)
    elapsed = t1 - t0
    json.dump({"n": n, "completed": count, "workers": workers, "elapsed": elapsed,
               "rate": count / elapsed if elapsed > 0 else None, "enqueue_s": enqueue_s,
               "finished": finished}, sys.stdout)
    sys.stdout.write("\n")
    return 0 if finished else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bare")
    b.add_argument("--port", type=int, required=True)
    h = sub.add_parser("huey")
    h.add_argument("--db", required=True)
    h.add_argument("--n", type=int, required=True)
    h.add_argument("--workers", type=int, default=4)
    h.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    if args.cmd == "bare":
        return bare(args.port)
    return huey_drain(args.db, args.n, args.workers, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
