"""Durations (`30s`, `10m`, `2h`, `1d`) and subscription offsets (`+2.hours`), pure functions."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import NamedTuple
from zoneinfo import ZoneInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> float:
    """`30s`, `10m`, `2h`, `1d`, `1w` or a number of seconds → seconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 10m, 2h, 1d, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a positive duration, got {value!r}")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"expected a duration like 30s, 10m, 2h, 1d, got {value!r}")
    return float(match.group(1)) * _SECONDS[match.group(2)]


_OFFSET = re.compile(
    r"^(\d+)\.(second|minute|hour|day|week|month|year)s?$"
)


class Offset(NamedTuple):
    """A subscription offset such as `+2.hours`: calendar-aware for months and years."""

    amount: int
    unit: str  # second, minute, hour, day, week, month, year

    def __str__(self) -> str:
        return f"+{self.amount}.{self.unit}{'s' if self.amount != 1 else ''}"

    def apply(self, ts: float, tz: ZoneInfo) -> float:
        """The Unix time `ts` plus this offset (months and years on the calendar of `tz`)."""
        if self.unit in ("month", "year"):
            months = self.amount * (12 if self.unit == "year" else 1)
            return add_months(dt.datetime.fromtimestamp(ts, tz), months).timestamp()
        if self.unit in ("day", "week"):
            days = self.amount * (7 if self.unit == "week" else 1)
            local = dt.datetime.fromtimestamp(ts, tz)
            naive = local.replace(tzinfo=None) + dt.timedelta(days=days)
            return naive.replace(tzinfo=tz).timestamp()
        return ts + self.amount * {"second": 1, "minute": 60, "hour": 3600}[self.unit]


def parse_offset(text: str) -> Offset:
    """`2.hours` (no plus sign) → Offset; ValueError naming the problem otherwise."""
    match = _OFFSET.match(text.strip())
    if not match:
        raise ValueError(
            f"bad offset {text!r}: expected N.unit with unit one of seconds, minutes, hours, "
            "days, weeks, months, years"
        )
    return Offset(int(match.group(1)), match.group(2))


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """Add calendar months, clamping the day (Jan 31 + 1 month = Feb 28/29)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    naive = moment.replace(tzinfo=None, year=year, month=month, day=day)
    return naive.replace(tzinfo=moment.tzinfo)
