"""HTTP/1.1 load generator on raw asyncio protocols (keep-alive, no pipelining).

Run as its own process, pinned to its own core, so the server under test never shares a CPU with
it: `python -m bench.loadgen --port P --path /webhooks/x --mode closed --conns 64 --duration 5`.
Prints one JSON object on stdout.

Why not aiohttp's client: on one core it tops out below a bare aiohttp server, which would make
the "bare handler" baseline a measure of the client. A prebuilt request and a tiny response
parser do several times more requests per CPU second. The generator reports its own CPU use, so
a saturated generator shows in the results.

closed: `conns` connections, each sends its next request as soon as the previous one answered.
open:   requests leave on a fixed schedule (`rate`/s) whatever the responses do; a request whose
        slot comes while every connection is busy opens a new one (up to `max_conns`), else waits
        for one, and the delay counts in its latency (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

#: A request not answered in this time counts as an error (and its connection is dropped).
REQUEST_TIMEOUT = 15.0


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        length = 0
        if status not in (204, 304):
            idx = head.find(b"\r\ncontent-length:")
            if idx >= 0:
                stop = head.find(b"\r\n", idx + 2)
                length = int(head[idx + 17: stop if stop >= 0 else None].strip())
            elif b"transfer-encoding: chunked" in head:
                term = self.buf.find(b"0\r\n\r\n", end + 4)
                if term < 0:
                    return
                length = term + 5 - (end + 4)
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def connect(host: str, port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Conn, host, port)
    return proto


async def closed_loop(args: argparse.Namespace, request: bytes) -> dict[str, Any]:
    conns = [await connect(args.host, args.port) for _ in range(args.conns)]
    statuses: dict[int, int] = {}
    errors = 0
    counted = 0
    start = time.perf_counter()
    warm_end = start + args.warmup
    deadline = warm_end + args.duration
    max_requests = args.max_requests or 1 << 62

    async def worker(conn: Conn) -> None:
        nonlocal errors, counted
        sent = 0
        while sent < max_requests:
            now = time.perf_counter()
            if now >= deadline:
                return
            try:
                status = await asyncio.wait_for(conn.request(request), REQUEST_TIMEOUT)
            except (ConnectionError, TimeoutError):
                errors += 1
                conn.close()
                return
            sent += 1
            if time.perf_counter() >= warm_end:
                counted += 1
                statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - warm_end
    for c in conns:
        c.close()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {"mode": "closed", "conns": args.conns, "elapsed": elapsed, "completed": counted,
            "ok": ok, "statuses": statuses, "errors": errors, "rps": ok / elapsed}


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-th percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def open_loop(args: argparse.Namespace, request: bytes) -> dict[str, Any]:
    idle: list[Conn] = [await connect(args.host, args.port) for _ in range(args.conns)]
    opened = len(idle)
    freed = asyncio.Condition()
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors = 0
    total = int(args.rate * args.duration)
    if args.max_requests:
        total = min(total, args.max_requests)
    interval = 1.0 / args.rate
    start = time.perf_counter() + 0.05
    late_sends = 0

    async def acquire() -> Conn:
        nonlocal opened
        while True:
            if idle:
                return idle.pop()
            if opened < args.max_conns:
                opened += 1
                return await connect(args.host, args.port)
            async with freed:
                await freed.wait_for(lambda: bool(idle) or opened < args.max_conns)

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors, opened
        conn = await acquire()
        try:
            status = await asyncio.wait_for(conn.request(request), REQUEST_TIMEOUT)
        except (ConnectionError, TimeoutError):
            errors += 1
            conn.close()
            opened -= 1
            async with freed:
                freed.notify()
            return
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1
        idle.append(conn)
        async with freed:
            freed.notify()

    tasks = []
    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late_sends += 1
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in idle:
        c.close()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    latencies.sort()
    return {"mode": "open", "rate": args.rate, "sent": total, "elapsed": elapsed, "ok": ok,
            "statuses": statuses, "errors": errors, "connections_opened": opened,
            "late_sends": late_sends, "http_p50": percentile(latencies, 50),
            "http_p99": percentile(latencies, 99),
            "http_max": latencies[-1] if latencies else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--body", default='{"hello": "world"}')
    p.add_argument("--mode", choices=("closed", "open"), default="closed")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--max-conns", type=int, default=256)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--max-requests", type=int, default=0,
                   help="closed: per connection; open: in all (0: no cap)")
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    request = build_request(args.host, args.port, args.path, args.body.encode())
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    if args.mode == "closed":
        out = asyncio.run(closed_loop(args, request))
    else:
        out = asyncio.run(open_loop(args, request))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    out["cpu_share"] = ((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)) / wall
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
