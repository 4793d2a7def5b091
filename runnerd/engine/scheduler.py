"""The scheduler: mechanic/scheduler/* events on wall-clock boundaries, and the janitor.

Every node runs the scheduler (a slot's row fires it once across nodes); the janitor runs on the
leader only (`engine.nodes`; on SQLite the one daemon always leads).

`latest_slot(name, now, tz)` is pure: the most recent boundary at or before `now` in `tz`.
The ticker only enqueues; a slot fires at most once because `scheduler_slots` has the primary key
(topic, slot_at). After downtime, each topic's latest missed slot fires once, late; the first
start on a database (or a topic newly subscribed) records the current slot without firing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

from runnerd import errors
from runnerd.queue import retention, runs
from runnerd.store import db
from runnerd.tasks import registry

logger = logging.getLogger(__name__)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
JANITOR_SECONDS = 60.0
MINUTES = {"hourly": 60}


def _local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    # A midnight that does not exist (DST at 00:00) maps forward, as zoneinfo resolves it.
    naive = dt.datetime.combine(day, dt.time())
    return naive.replace(tzinfo=tz).astimezone(dt.UTC).astimezone(tz)


def latest_slot(name: str, now: float, tz: ZoneInfo) -> float:
    """The latest boundary of `mechanic/scheduler/<name>` at or before Unix time `now`."""
    local = dt.datetime.fromtimestamp(now, tz)
    minutes = MINUTES.get(name) or (int(name[:-3]) if name.endswith("min") else None)
    if minutes:
        # Floor the local wall clock; the instant keeps the fold, so a repeated hour (DST end)
        # has two distinct boundaries.
        floored = local.replace(minute=local.minute - local.minute % minutes, second=0,
                                microsecond=0) if minutes < 60 else local.replace(
            minute=0, second=0, microsecond=0)
        return floored.timestamp()
    if name == "daily":
        day = local.date()
    elif name == "monthly":
        day = local.date().replace(day=1)
    elif name in WEEKDAYS:
        day = local.date() - dt.timedelta(days=(local.weekday() - WEEKDAYS.index(name)) % 7)
    else:
        raise ValueError(f"unknown scheduler topic {name!r}")
    slot = _local_midnight(day, tz).timestamp()
    if slot > now:  # only when a midnight was moved forward past `now`
        slot = _local_midnight(day - dt.timedelta(days=1), tz).timestamp()
    return slot


def fire(tx: db.Tx, due: dict[str, float], known: dict[str, float], now: float) -> list[str]:
    """Record each topic's slot; create its event unless the topic had no slot before."""
    events, fired = [], []
    for topic, slot in due.items():
        event = None
        if topic in known:
            event = runs.new_event(topic, None, "scheduler", now)
        inserted = tx.execute("insert_slot", {"topic": topic, "slot_at": slot, "fired_at": now,
                                              "event_id": event.id if event else None}).rowcount
        if inserted and event is not None:
            events.append(event)
            fired.append(topic)
    runs.insert_events(tx, events, now)
    return fired


class Scheduler:
    """Ticks once a second: fires due slots, and now and then purges the cache and prunes."""

    def __init__(
        self,
        database: db.Database,
        get_registry: Callable[[], registry.Registry],
        *,
        on_fire: Callable[[], None],
        clock: Callable[[], float] = time.time,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.db = database
        self.get_registry = get_registry
        self.on_fire = on_fire
        self.clock = clock
        self.is_leader = is_leader  #: the janitor runs on the leader only (engine.nodes)
        self.known: dict[str, float] = {}  # topic -> latest recorded slot
        self.last_tick: dict[str, float] = {}  # topic -> when it last fired (metrics)
        self._last_janitor = 0.0

    async def load(self) -> None:
        """Read each topic's latest recorded slot."""
        rows = await self.db.read(lambda tx: tx.all("latest_slots"))
        self.known = {r["topic"]: r["slot_at"] for r in rows}

    async def tick(self, now: float) -> list[str]:
        """Fire every subscribed topic whose latest slot is newer than the one recorded."""
        reg = self.get_registry()
        tz = reg.settings.tz
        due = {}
        for topic in reg.scheduler_topics:
            slot = latest_slot(topic[len(registry.SCHEDULER_PREFIX):], now, tz)
            if slot > self.known.get(topic, float("-inf")):
                due[topic] = slot
        if not due:
            return []
        known = dict(self.known)
        fired = await self.db.write(lambda tx: fire(tx, due, known, now))
        self.known.update(due)
        for topic in fired:
            self.last_tick[topic] = now
            logger.info("fired %s", topic, extra={"action": "scheduler_fired", "topic": topic})
        if fired:
            self.on_fire()
        return fired

    async def janitor(self, now: float) -> None:
        """Retention (`retention.prune`, the same as `runnerd prune`): in short transactions until
        nothing more is due, so a backlog larger than one batch is not left for the next pass."""
        done = await retention.prune(self.db, self.get_registry().settings, now)
        if any(done.values()):
            logger.info("janitor: %s", ", ".join(f"{k} {v}" for k, v in done.items() if v),
                        extra={"action": "janitor", **done})

    async def run(self, stop: asyncio.Event) -> None:
        """Tick on every second until `stop`."""
        await self.load()
        while not stop.is_set():
            now = self.clock()
            try:
                await self.tick(now)
                if now - self._last_janitor >= JANITOR_SECONDS and self.is_leader():
                    self._last_janitor = now
                    await self.janitor(now)
            except errors.DatabaseError as exc:
                # The slot is not recorded, so it fires on the next tick that can write.
                logger.error("scheduler cannot write: %s", exc, extra={"action": "db_write_failed"})
            delay = 1.0 - (self.clock() % 1.0) + 0.001
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
