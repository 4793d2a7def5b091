"""Durations and subscription offsets."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from runnerd.config import durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 604800), (45, 45),
    ("1.5h", 5400), ("90", 90),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert durations.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10 minutes", "-5s", "abc", True, -1])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        durations.parse_duration(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("2.hours", (2, "hour")), ("1.hour", (1, "hour")), ("15.seconds", (15, "second")),
    ("0.minutes", (0, "minute")), ("12.months", (12, "month")), ("1.year", (1, "year")),
    ("3.weeks", (3, "week")), ("100.days", (100, "day")),
])
def test_parse_offset(text: str, expected: tuple[int, str]) -> None:
    assert tuple(durations.parse_offset(text)) == expected


@pytest.mark.parametrize("bad", ["2.fortnights", "hours", "1.5.hours", "-1.hour", "2 hours"])
def test_parse_offset_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="bad offset"):
        durations.parse_offset(bad)


def test_offsets_apply() -> None:
    utc = ZoneInfo("UTC")
    t = dt.datetime(2023, 1, 31, 12, tzinfo=utc).timestamp()
    assert durations.Offset(15, "second").apply(t, utc) == t + 15
    month = durations.Offset(1, "month").apply(t, utc)
    assert dt.datetime.fromtimestamp(month, utc) == dt.datetime(2023, 2, 28, 12, tzinfo=utc)
    year = durations.Offset(1, "year").apply(dt.datetime(2024, 2, 29, tzinfo=utc).timestamp(), utc)
    assert dt.datetime.fromtimestamp(year, utc).date() == dt.date(2025, 2, 28)


def test_day_offset_keeps_wall_clock_across_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    t = dt.datetime(2026, 3, 28, 9, 0, tzinfo=paris).timestamp()
    later = durations.Offset(1, "day").apply(t, paris)
    assert dt.datetime.fromtimestamp(later, paris).hour == 9
    assert later - t == 23 * 3600
