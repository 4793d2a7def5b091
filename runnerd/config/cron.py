"""Five-field cron expressions for monitor schedules, read as Healthchecks reads them (cronsim).

    minute hour day-of-month month day-of-week      e.g. "0 3 * * *", "*/15 9-17 * * mon-fri"

cronsim is Healthchecks' own parser, so a schedule means what it means there and in Debian's
cron: `*`, numbers, ranges, lists, steps, month and weekday names; `L` (the last day of the month,
or `5L` the last Friday) and `#` (`1#2`, the second Monday); when both day fields are restricted
and neither starts with `*`, a day matches if *either* matches (`0 0 1,15 * 5`: the 1st, the 15th
and every Friday), else both must (`0 0 */2 * 1`: Mondays that are odd days of the month). Times
are wall-clock minutes in the given zone: a time skipped by the spring-forward change fires at the
end of the gap (02:30 → 03:00), a repeated one fires once. `describe` says a schedule in words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import cronsim

_CHECK_FROM = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Cron:
    """A valid expression."""

    expr: str


def parse(expr: str) -> Cron:
    """Check an expression; ValueError says what is wrong with it."""
    try:
        cronsim.CronSim(expr, _CHECK_FROM)
    except cronsim.CronSimError as exc:
        why = str(exc)
        raise ValueError(f"bad schedule {expr!r}: {why[:1].lower()}{why[1:]} (5 fields: minute "
                         "hour day-of-month month day-of-week)") from None
    return Cron(expr)


def next_after(cron: Cron, after: float, tz: ZoneInfo) -> float:
    """The first matching instant strictly after Unix time `after`."""
    start = dt.datetime.fromtimestamp(after, tz)
    return next(cronsim.CronSim(cron.expr, start)).timestamp()


def describe(cron: Cron) -> str:
    """The schedule in words ("At 03:00 on the last day of every month")."""
    return str(cronsim.CronSim(cron.expr, _CHECK_FROM).explain())
