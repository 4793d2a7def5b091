"""Five-field cron expressions for monitor schedules: pure functions of a time and a time zone.

    minute hour day-of-month month day-of-week      e.g. "0 3 * * *", "*/15 9-17 * * mon-fri"

Each field takes `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`; months and
weekdays also take English three-letter names; weekday 0 and 7 are Sunday. As in Vixie cron, when
both day fields are restricted a day matches if *either* matches. Times are wall-clock minutes in
the given zone: a minute skipped by a DST change never matches, a repeated one matches twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: (name, low, high, names) of the five fields.
_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
           ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))
#: No schedule is further apart than this (29 February on a Monday comes back within 28 years).
_HORIZON_DAYS = 366 * 29


@dataclasses.dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  #: 0 = Sunday … 6 = Saturday
    any_day: bool  #: day of month is `*`
    any_weekday: bool  #: day of week is `*`

    def day_matches(self, day: dt.date) -> bool:
        """True when `day` is allowed by the month and the two day fields."""
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week


def _number(text: str, low: int, high: int, names: tuple[str, ...], what: str) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + (1 if names is _MONTHS else 0)
    if not text.isdigit():
        raise ValueError(f"bad {what} value {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} value {value} out of range {low}-{high}")
    return value


def _field(text: str, low: int, high: int, names: tuple[str, ...], what: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"bad {what} step {step_text!r}")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, stop = (_number(a, low, high, names, what), _number(b, low, high, names, what))
            if start > stop:
                raise ValueError(f"bad {what} range {base!r}")
        else:
            start = _number(base, low, high, names, what)
            stop = high if step_text else start
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def parse(expr: str) -> Cron:
    """Parse a five-field expression; ValueError says which field is wrong."""
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"bad schedule {expr!r}: expected 5 fields "
                         "(minute hour day-of-month month day-of-week)")
    sets = [_field(p, low, high, names, what) for p, (what, low, high, names)
            in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3], weekdays=weekdays,
                any_day=parts[2] == "*", any_weekday=parts[4] == "*")
    try:  # "0 0 30 2 *" parses field by field but never comes: refuse it here, not every tick
        _scan(cron, dt.datetime(2000, 1, 1), 1)
    except ValueError:
        raise ValueError(f"bad schedule {expr!r}: it never matches a date") from None
    return cron


def _instants(local: dt.datetime, tz: ZoneInfo) -> list[float]:
    """The Unix times a naive local minute stands for: none in a DST gap, two in a repeat."""
    out = []
    for fold in (0, 1):
        aware = local.replace(tzinfo=tz, fold=fold)
        # A wall time that does not exist round-trips to a different wall time: skip it.
        if aware.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None) == local:
            ts = aware.timestamp()
            if ts not in out:
                out.append(ts)
    return out


def _scan(cron: Cron, start: dt.datetime, direction: int) -> dt.datetime:
    """The first matching naive local minute from `start` (inclusive) in `direction` (±1)."""
    minute = dt.timedelta(minutes=direction)
    day = start.date()
    limit = day + dt.timedelta(days=_HORIZON_DAYS * direction)
    current = start
    while day != limit:
        if cron.day_matches(day):
            while current.date() == day:
                if current.hour in cron.hours and current.minute in cron.minutes:
                    return current
                if current.hour not in cron.hours:  # skip the rest of this hour
                    top = current.replace(minute=0)
                    current = top + dt.timedelta(hours=1) if direction > 0 else top + minute
                    continue
                current += minute
        day += dt.timedelta(days=direction)
        current = dt.datetime.combine(day, dt.time(0, 0) if direction > 0 else dt.time(23, 59))
    raise ValueError("the schedule never matches")


def next_after(cron: Cron, after: float, tz: ZoneInfo) -> float:
    """The first matching instant strictly after Unix time `after`."""
    local = dt.datetime.fromtimestamp(after, tz).replace(tzinfo=None, second=0, microsecond=0)
    candidate = local
    while True:
        found = _scan(cron, candidate, 1)
        later = [ts for ts in _instants(found, tz) if ts > after]
        if later:
            return min(later)
        candidate = found + dt.timedelta(minutes=1)


def prev_before(cron: Cron, before: float, tz: ZoneInfo) -> float:
    """The last matching instant at or before Unix time `before`."""
    local = dt.datetime.fromtimestamp(before, tz).replace(tzinfo=None, second=0, microsecond=0)
    candidate = local
    while True:
        found = _scan(cron, candidate, -1)
        earlier = [ts for ts in _instants(found, tz) if ts <= before]
        if earlier:
            return max(earlier)
        candidate = found - dt.timedelta(minutes=1)
