"""The heartbeat: workers rows, health facts and problems, WATCHDOG=1 over a real AF_UNIX socket,
/health (200 and 503) and `runnerd workers`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import test_utils

from runnerd import actions, daemon
from runnerd.monitoring import heartbeat, sd_notify
from runnerd.store import db

from .conftest import Daemon


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket, as systemd's NOTIFY_SOCKET (a short path: sun_path is 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="rd-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.0)
    try:
        yield path, sock
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_beat_writes_the_row_and_feeds_the_watchdog(database: db.Database, clock) -> None:
    dead: list[str] = []
    writable = [True]
    with notify_socket() as (path, sock):
        beat = heartbeat.Heartbeat(database, notifier=sd_notify.Notifier(path), clock=clock,
                                   active_runs=lambda: 3, db_writable=lambda: writable[0],
                                   dead_components=lambda: dead)
        assert await beat.beat(clock()) is True
        assert drain(sock) == ["WATCHDOG=1"]
        (row,) = await database.read(lambda tx: heartbeat.rows(tx, clock() + 2, 30.0))
        assert row["healthy"] is True and row["active_runs"] == 3 and row["pid"] == os.getpid()
        assert row["heartbeat_age_seconds"] == 2.0
        assert beat.facts(clock())["status"] == "ok"
        dead.append("scheduler")
        writable[0] = False
        clock.advance(5)
        assert await beat.beat(clock()) is False
        assert drain(sock) == []  # no WATCHDOG=1 while unhealthy: systemd restarts us
        (row,) = await database.read(lambda tx: heartbeat.rows(tx, clock(), 30.0))
        assert row["healthy"] is False
        assert row["problem"] == "component scheduler stopped; database unwritable"
        clock.advance(16)  # three intervals without a beat: stale
        assert "heartbeat stale (16s old)" in beat.problems(clock())


async def test_the_probe_sees_a_stalled_loop(database: db.Database, clock) -> None:
    beat = heartbeat.Heartbeat(database, notifier=sd_notify.Notifier(None), clock=clock,
                               lag_threshold=0.2)
    stop = asyncio.Event()
    probe = asyncio.create_task(beat._probe(stop))
    await asyncio.sleep(0.05)
    time.sleep(0.5)  # the loop is blocked: exactly what the probe exists to notice
    async with asyncio.timeout(5):
        while beat.loop_lag < 0.2:
            await asyncio.sleep(0.05)
    assert any(p.startswith("event loop stalled") for p in beat.problems(clock()))
    assert await beat.beat(clock()) is False
    stop.set()
    await probe


def test_watchdog_interval() -> None:
    assert heartbeat.watchdog_interval({}) == 5.0
    assert heartbeat.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 5.0
    assert heartbeat.watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert heartbeat.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) == 5.0


async def test_health_503_names_the_reason(database: db.Database, tmp_path: Path, clock) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"database: {tmp_path / 'test.db'}\n")
    dead: list[str] = []
    parts = daemon.build(daemon.load(str(path), {}), database, actions.Registry(), None,
                         clock=clock, notifier=sd_notify.Notifier(None), environ={},
                         dead_components=lambda: dead)
    async with test_utils.TestClient(test_utils.TestServer(parts.app)) as client:
        resp = await client.get("/health")
        assert resp.status == 503 and (await resp.json())["problems"] == ["no heartbeat yet"]
        await parts.heartbeat.beat(clock())
        resp = await client.get("/health")
        facts = await resp.json()
        assert resp.status == 200 and facts["status"] == "ok" and facts["problems"] == []
        dead.append("worker")
        resp = await client.get("/health")
        assert resp.status == 503
        assert (await resp.json())["problems"] == ["component worker stopped"]


def test_daemon_health_and_workers_command(make_daemon) -> None:
    d: Daemon = make_daemon("tasks: []\n").start()
    status, headers, body = d.request("GET", "/health")
    facts = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert facts["status"] == "ok" and facts["pid"] == d.proc.pid
    out = d.cli("workers", "--json")
    (row,) = json.loads(out.stdout)
    assert row["pid"] == d.proc.pid and row["healthy"] is True and row["stopped_at"] is None
    assert "yes" in d.cli("workers").stdout
    assert d.stop() == 0
    (row,) = json.loads(d.cli("workers", "--json").stdout)
    assert row["healthy"] is False and row["stopped_at"] is not None
    assert "stopped" in d.cli("workers").stdout
