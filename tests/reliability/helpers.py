"""Helpers of the reliability suite: a misbehaving HTTP target, a webhook load generator, and the
webhook app in-process on a real State (for fuzzing at hundreds of requests a second).

Everything listens on 127.0.0.1 only; every loop is bounded by a count or a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import test_utils, web

from runnerd import actions, daemon
from runnerd.monitoring import sd_notify
from runnerd.store import db

from ..conftest import wait_until


class Target:
    """An aiohttp server in its own thread: /ok, /slow?s=N, /hang, /reset, /status/N,
    /to?url=U (a 302 to U); `headers` keeps the last request's headers by path."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host  # any of 127.0.0.0/8: Linux serves them all on lo
        self.port = 0
        self.hits: dict[str, int] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="target", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Target:
        self._thread.start()
        assert self._ready.wait(10), "target server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{kind}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        self.hits[kind] = self.hits.get(kind, 0) + 1
        self.headers[kind] = dict(request.headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if kind == "slow":
                await asyncio.sleep(float(request.query.get("s", "1")))
            elif kind == "hang":
                await asyncio.sleep(3600)
            elif kind == "reset":
                transport = request.transport
                assert transport is not None
                sock = transport.get_extra_info("socket")
                if sock is not None:  # RST instead of FIN: SO_LINGER with a zero timeout
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                                    b"\x00\x00\x00\x00")
                transport.close()
                return web.Response()
            elif kind == "to":
                return web.Response(status=302, headers={"Location": request.query["url"]})
            elif kind == "status":
                return web.Response(status=int(request.query.get("code", "500")))
            return web.json_response({"ok": True, "kind": kind})
        finally:
            self.in_flight -= 1


class Loader:
    """A thread posting webhooks as fast as one connection allows, recording every answer."""

    def __init__(self, port: int, path: str = "/webhooks/orders", body_size: int = 0) -> None:
        self.port = port
        self.path = path
        self.padding = "x" * body_size
        self.accepted: list[str] = []  #: X-Request-Id of every 204
        self.statuses: dict[int | str, int] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="loader", daemon=True)

    def start(self) -> Loader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "load generator did not stop"

    def _count(self, key: int | str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def _main(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            body = json.dumps({"i": self.sent, "pad": self.padding})
            self.sent += 1
            try:
                conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                # Refused while the daemon is down, or cut by a kill: not acknowledged, so the
                # sender would retry; nothing is promised for it.
                self._count("conn-error")
                conn.close()
                conn = None
                self._stop.wait(0.01)
                continue
            self._count(resp.status)
            if resp.status == 204:
                self.accepted.append(resp.headers["X-Request-Id"])
        if conn is not None:
            conn.close()


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process, in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


wait_for = wait_until  # the suite's poller, under the name these tests use


def orders_config(*actions: str, concurrency: int = 4, extra: str = "") -> str:
    """The config these tests share: an `orders` webhook and a Counter task with `actions`."""
    code = "".join(f"      {a}\n" for a in actions)
    return (f"concurrency: {concurrency}\n{extra}webhooks:\n"
            "  - {name: orders, topic: user/orders/ready}\ntasks:\n  - name: Counter\n"
            f"    subscriptions: user/orders/ready\n    code: |\n{code}")


class InProcess:
    """The daemon's app (`daemon.build`) on a real database, with its ingest running, in this
    loop."""

    def __init__(self, tmp: Path, body: str) -> None:
        self.config = tmp / "inproc.yaml"
        self.config.write_text(f"database: {tmp / 'inproc.db'}\n" + textwrap.dedent(body))

    async def __aenter__(self) -> InProcess:
        self.registry = daemon.load(str(self.config), {})
        self.db = await db.Database(self.registry.settings.database).open()
        await self.db.migrate()
        self.parts = daemon.build(self.registry, self.db, actions.Registry(), None,
                                  clock=time.time, notifier=sd_notify.Notifier(None), environ={})
        self._stop = asyncio.Event()
        self._ingest = asyncio.create_task(self.parts.ingest.run(self._stop))
        self.client = test_utils.TestClient(test_utils.TestServer(self.parts.app))
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        self._stop.set()
        await asyncio.wait_for(self._ingest, 10)
        await self.db.close()

    @property
    def ingest_alive(self) -> bool:
        return not self._ingest.done()

    async def events(self) -> list[Any]:
        return await self.db.read(lambda tx: tx.conn.execute(
            "SELECT * FROM events ORDER BY rowid").fetchall())


@contextlib.asynccontextmanager
async def in_process(tmp: Path, body: str) -> AsyncIterator[InProcess]:
    """`async with in_process(tmp, yaml) as app:` — see InProcess."""
    async with InProcess(tmp, body) as app:
        yield app


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path` (root only); raises PermissionError/OSError when not allowed."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise PermissionError(out.stderr.strip() or "mount failed")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)
