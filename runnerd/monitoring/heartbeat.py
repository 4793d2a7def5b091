"""The heartbeat: a `workers` row every 5 s (on PostgreSQL at least three per `node_timeout`, which
other nodes judge it by: `engine.nodes`), the health facts behind /health, systemd's watchdog.

Healthy means: every supervised component is alive, the event loop has not stalled for more
than `lag_threshold` seconds since the last beat (a probe sleeps a quarter second and measures
how late it wakes), the database takes writes (the worker's last write and the beat itself), and
its files are still the ones the daemon opened (not deleted or replaced: `Database.check_files`).
The database problem says why when it is known (the beat's error, or a PostgreSQL server
unreachable: `Database.unreachable`, both naming the database); the next beat written clears
it: a server back after an outage needs no restart.
On PostgreSQL each beat first checks that the node still holds its name (`still_named`): a
node whose name another process took stops, rather than beat under that name.
`WATCHDOG=1` goes to systemd only on a healthy beat, so a daemon that stays unhealthy for
`WatchdogSec` is restarted; with `WATCHDOG_USEC` set, beats come at least twice per period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from runnerd import errors, models
from runnerd.monitoring import sd_notify
from runnerd.store import db

logger = logging.getLogger(__name__)

INTERVAL = 5.0
#: An event loop that did not run for this long since the last beat is unhealthy.
LAG_THRESHOLD = 10.0
PROBE_SECONDS = 0.25
#: /health calls a heartbeat older than this many intervals stale.
STALE_INTERVALS = 3


def watchdog_interval(environ: Mapping[str, str], default: float = INTERVAL) -> float:
    """Seconds between beats: `default`, or half of systemd's WATCHDOG_USEC when shorter."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return default
    return min(default, int(usec) / 1e6 / 2)


class Heartbeat:
    """Beats, probes the loop, and answers "are we healthy, and why not"."""

    def __init__(
        self,
        database: db.Database,
        *,
        notifier: sd_notify.Notifier,
        active_runs: Callable[[], int] = lambda: 0,
        db_writable: Callable[[], bool] = lambda: True,
        dead_components: Callable[[], list[str]] = lambda: [],
        clock: Callable[[], float] = time.time,
        interval: float = INTERVAL,
        lag_threshold: float = LAG_THRESHOLD,
        node: str | None = None,
        still_named: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.db = database
        #: before each beat: whether this process is still the node it beats as (PostgreSQL:
        #: its name's lock kept, `Daemon.keep_name`); once False it beats no more
        self.still_named = still_named
        self.notifier = notifier
        self.active_runs = active_runs
        self.db_writable = db_writable
        self.dead_components = dead_components
        self.clock = clock
        self.interval = interval
        self.lag_threshold = lag_threshold
        self.started_at = clock()
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.node = node or self.host  #: the node name (`Settings.node`)
        self.id = f"{self.host}:{self.pid}:{int(self.started_at)}"
        self.last_beat_at: float | None = None
        self.beat_ok = True  #: False when the last beat could not be written
        self.beat_error: str | None = None  #: why not (the database and its error)
        self.first_beat = asyncio.Event()  #: set once the first beat was attempted
        self._lag = 0.0  # worst loop lag since the last beat
        self._last_lag = 0.0  # the worst lag of the window the last beat reported

    @property
    def loop_lag(self) -> float:
        """The worst event-loop lag over the current and the previous beat's window (s)."""
        return max(self._lag, self._last_lag)

    def problems(self, now: float) -> list[str]:
        """Why the daemon is not healthy (empty: healthy)."""
        out = [f"component {name} stopped" for name in self.dead_components()]
        if self.loop_lag > self.lag_threshold:
            out.append(f"event loop stalled for {self.loop_lag:.1f}s")
        if (gone := self.db.check_files()) is not None:
            out.append(gone)
        unreachable = self.db.unreachable
        if not self.beat_ok or not self.db_writable() or unreachable is not None:
            why = self.beat_error or unreachable
            out.append("database unwritable" + (f": {why}" if why else ""))
        if self.last_beat_at is None:
            out.append("no heartbeat yet")
        elif now - self.last_beat_at > STALE_INTERVALS * self.interval:
            out.append(f"heartbeat stale ({now - self.last_beat_at:.0f}s old)")
        return out

    def facts(self, now: float) -> dict[str, Any]:
        """What /health and the status page show."""
        problems = self.problems(now)
        return {
            "status": "ok" if not problems else "unhealthy",
            "problems": problems,
            "worker_id": self.id,
            "pid": self.pid,
            "host": self.host,
            "node": self.node,
            "started_at": models.iso(self.started_at),
            "uptime_seconds": round(now - self.started_at, 3),
            "heartbeat_at": models.iso(self.last_beat_at),
            "heartbeat_age_seconds": (None if self.last_beat_at is None
                                      else round(now - self.last_beat_at, 3)),
            "loop_lag_seconds": round(self.loop_lag, 4),
            "active_runs": self.active_runs(),
            "dead_components": self.dead_components(),
        }

    async def beat(self, now: float) -> bool:
        """Write the row; send WATCHDOG=1 when healthy. Returns whether it was healthy."""
        window, self._lag = self._lag, 0.0
        self._last_lag = window
        problems = [p for p in self.problems(now) if not p.startswith(("heartbeat", "no heart"))]
        row = {"id": self.id, "pid": self.pid, "host": self.host, "started_at": self.started_at,
               "now": now, "healthy": int(not problems), "active_runs": self.active_runs(),
               "problem": "; ".join(problems) or None, "loop_lag": round(window, 4),
               "node": self.node}
        try:
            await self.db.write(lambda tx: tx.execute("worker_beat", row))
        except errors.DatabaseError as exc:
            if self.beat_ok:
                logger.error("heartbeat not written: %s", exc, extra={"action": "db_write_failed"})
            self.beat_ok, self.beat_error = False, exc.message
            return False
        self.beat_ok, self.beat_error = True, None
        self.last_beat_at = now
        if problems:
            logger.warning("unhealthy: %s", "; ".join(problems), extra={"action": "unhealthy"})
            return False
        self.notifier.send("WATCHDOG=1")
        return True

    async def _probe(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            start = time.monotonic()
            await asyncio.sleep(PROBE_SECONDS)
            self._lag = max(self._lag, time.monotonic() - start - PROBE_SECONDS)

    async def begin(self) -> None:
        """Retire earlier processes' rows and write the first beat (once), then set
        `first_beat`: the daemon's worker starts after it, as other nodes judge this node's runs
        by this row."""
        if self.first_beat.is_set():
            return
        try:
            # Rows of processes silent for long are pruned with the rest of retention
            # (retention.prune_batch). On PostgreSQL only this node's earlier rows are
            # retired: other nodes' are theirs (a dead one's are the leader's: engine.nodes).
            await self.db.write(lambda tx: tx.execute(
                "workers_retire_node" if self.db.engine == "postgres" else "workers_retire",
                {"id": self.id, "node": self.node}))
        except errors.DatabaseError as exc:
            logger.error("workers table not updated: %s", exc, extra={"action": "db_write_failed"})
        await self.beat(self.clock())
        self.first_beat.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every `interval` (the first beat: `begin`) until `stop`; then record the clean
        stop."""
        await self.begin()
        probe = asyncio.create_task(self._probe(stop), name="loop-lag-probe")
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
                except TimeoutError:
                    if self.still_named is None or await self.still_named():
                        await self.beat(self.clock())
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            try:
                await asyncio.shield(self.db.write(lambda tx: tx.execute(
                    "worker_stopped", {"id": self.id, "now": self.clock()})))
            except errors.DatabaseError:
                pass


def alive(row: db.Row, now: float, timeout: float) -> bool:
    """Whether a `workers` row is a live process: not stopped, and beat within `timeout`
    seconds (`node_timeout`)."""
    return row["stopped_at"] is None and now - row["heartbeat_at"] <= timeout


def rows(tx: db.Tx, now: float, timeout: float) -> list[dict[str, Any]]:
    """`runnerd workers`: every row, newest first, with ages in seconds; `alive` when it has not
    stopped and beat within `timeout` seconds (`node_timeout`)."""
    out = []
    for r in tx.all("workers_all"):
        out.append({
            "id": r["id"], "node": r["node"], "pid": r["pid"], "host": r["host"],
            "alive": alive(r, now, timeout),
            "started_at": models.iso(r["started_at"]),
            "heartbeat_at": models.iso(r["heartbeat_at"]),
            "heartbeat_age_seconds": round(now - r["heartbeat_at"], 1),
            "uptime_seconds": round((r["stopped_at"] or now) - r["started_at"], 1),
            "healthy": bool(r["healthy"]), "active_runs": r["active_runs"],
            "problem": r["problem"], "loop_lag_seconds": r["loop_lag"],
            "stopped_at": models.iso(r["stopped_at"]),
        })
    return out
