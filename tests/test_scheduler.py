"""Scheduler boundaries (pure, DST included) and firing: once per slot, late once after downtime."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from runnerd.engine import scheduler
from runnerd.store import db

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
NY = ZoneInfo("America/New_York")


def ts(text: str, tz: ZoneInfo = UTC) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def local(value: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(value, tz).strftime("%Y-%m-%d %H:%M %Z")


@pytest.mark.parametrize(("name", "now", "expected"), [
    ("10min", "2026-03-04 10:17:59", "2026-03-04 10:10"),
    ("10min", "2026-03-04 10:20:00", "2026-03-04 10:20"),
    ("15min", "2026-03-04 10:44:00", "2026-03-04 10:30"),
    ("20min", "2026-03-04 10:59:59", "2026-03-04 10:40"),
    ("30min", "2026-03-04 10:31:00", "2026-03-04 10:30"),
    ("5min", "2026-03-04 10:34:00", "2026-03-04 10:30"),
    ("hourly", "2026-03-04 10:59:00", "2026-03-04 10:00"),
    ("daily", "2026-03-04 23:59:00", "2026-03-04 00:00"),
    ("monthly", "2026-03-31 12:00:00", "2026-03-01 00:00"),
    ("monday", "2026-03-04 12:00:00", "2026-03-02 00:00"),  # a Wednesday
    ("wednesday", "2026-03-04 12:00:00", "2026-03-04 00:00"),
    ("thursday", "2026-03-04 12:00:00", "2026-02-26 00:00"),
])
def test_latest_slot_utc(name: str, now: str, expected: str) -> None:
    slot = scheduler.latest_slot(name, ts(now), UTC)
    assert dt.datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%d %H:%M") == expected


def test_daily_is_local_midnight() -> None:
    slot = scheduler.latest_slot("daily", ts("2026-07-01 08:00:00", PARIS), PARIS)
    assert local(slot, PARIS) == "2026-07-01 00:00 CEST"


def test_hourly_across_spring_forward() -> None:
    # 2026-03-08 02:00 EST does not exist in New York: 01:59 EST is followed by 03:00 EDT.
    before = scheduler.latest_slot("hourly", ts("2026-03-08 06:59:00"), NY)
    after = scheduler.latest_slot("hourly", ts("2026-03-08 07:00:00"), NY)
    assert local(before, NY) == "2026-03-08 01:00 EST"
    assert local(after, NY) == "2026-03-08 03:00 EDT"
    assert after - before == 3600


def test_hourly_across_fall_back_fires_for_both_one_oclocks() -> None:
    # 2026-11-01 01:00-02:00 happens twice in New York.
    first = scheduler.latest_slot("hourly", ts("2026-11-01 05:30:00"), NY)
    second = scheduler.latest_slot("hourly", ts("2026-11-01 06:30:00"), NY)
    assert local(first, NY) == "2026-11-01 01:00 EDT"
    assert local(second, NY) == "2026-11-01 01:00 EST"
    assert second - first == 3600


def test_daily_on_dst_days_is_still_midnight() -> None:
    for day in ("2026-03-29", "2026-10-25"):  # Paris DST changes
        slot = scheduler.latest_slot("daily", ts(f"{day} 12:00:00", PARIS), PARIS)
        assert local(slot, PARIS).startswith(f"{day} 00:00")


def test_slot_never_in_the_future() -> None:
    now = ts("2026-03-04 10:17:59")
    for name in ("10min", "1min", "hourly", "daily", "monthly", "sunday"):
        assert scheduler.latest_slot(name, now, PARIS) <= now


class FakeRegistry:
    def __init__(self, topics: set[str]) -> None:
        self.scheduler_topics = frozenset(topics)

        class S:
            tz = UTC
            retention_days = 15.0
            retention_days_failed = 90.0

        self.settings = S()


async def events_of(database: db.Database) -> list[str]:
    return await database.read(lambda tx: [r[0] for r in tx.conn.execute(
        "SELECT topic FROM events ORDER BY created_at")])


async def test_first_start_fires_nothing_then_each_boundary_once(database: db.Database) -> None:
    reg = FakeRegistry({"mechanic/scheduler/10min"})
    fired: list[int] = []
    s = scheduler.Scheduler(database, lambda: reg, on_fire=lambda: fired.append(1))  # type: ignore
    await s.load()
    t0 = ts("2026-03-04 10:05:00")
    assert await s.tick(t0) == []  # first start: the current slot is recorded, not fired
    assert await s.tick(t0 + 60) == []
    assert await s.tick(ts("2026-03-04 10:10:00")) == ["mechanic/scheduler/10min"]
    assert await s.tick(ts("2026-03-04 10:10:01")) == []
    assert await events_of(database) == ["mechanic/scheduler/10min"]
    assert fired == [1]


async def test_downtime_fires_the_latest_missed_slot_once(database: db.Database) -> None:
    reg = FakeRegistry({"mechanic/scheduler/10min"})
    s1 = scheduler.Scheduler(database, lambda: reg, on_fire=lambda: None)  # type: ignore
    await s1.load()
    await s1.tick(ts("2026-03-04 10:05:00"))
    # "restart" an hour later: a new scheduler reads the slots table
    s2 = scheduler.Scheduler(database, lambda: reg, on_fire=lambda: None)  # type: ignore
    await s2.load()
    assert await s2.tick(ts("2026-03-04 11:07:00")) == ["mechanic/scheduler/10min"]
    assert await s2.tick(ts("2026-03-04 11:08:00")) == []
    # a third scheduler that thinks it has never seen the slot cannot fire it again
    s3 = scheduler.Scheduler(database, lambda: reg, on_fire=lambda: None)  # type: ignore
    s3.known = {"mechanic/scheduler/10min": ts("2026-03-04 10:00:00")}
    assert await s3.tick(ts("2026-03-04 11:09:00")) == []
    assert await events_of(database) == ["mechanic/scheduler/10min"]
