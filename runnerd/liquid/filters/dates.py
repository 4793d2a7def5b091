"""Mechanic's `date` and `parse_date` filters: Ruby strftime, `"now ± N unit"`, `tz:`,
`beginning_of_*`/`end_of_*`, calendar-aware `advance:` (pure functions, stdlib only)."""

from __future__ import annotations

import calendar
import datetime as dt
import email.utils
import functools
import re
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any

UTC = dt.UTC
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = {"year": "years", "month": "months", "week": "weeks", "day": "days", "hour": "hours",
          "minute": "minutes", "second": "seconds"}
_AMOUNT = re.compile(r"([+-]?)\s*(\d+(?:\.\d+)?)\s*([a-z]+)", re.I)
_SEPARATOR = re.compile(r"^(?:\s|,|and\b)*$", re.I)
_NOW = re.compile(r"^(?:now|today)\s*(?:([+-])\s*(.+))?$", re.I)
_EPOCH = re.compile(r"^-?\d+(?:\.\d+)?$")
_RUBY_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(UTC|Z|[+-]\d{2}:?\d{2})?$")
#: Written forms Ruby's date parser reads (`Date._parse`): slashes are month/day/year, dashes
#: and dots day-month-year (`06-12-2026` is what `date: "%d-%m-%Y"` writes), month names.
_DAY_FORMATS = ("%Y/%m/%d", "%m/%d/%Y", "%d-%m-%Y", "%d.%m.%Y", "%B %d, %Y", "%b %d, %Y",
                "%B %d %Y", "%b %d %Y", "%d %B %Y", "%d %b %Y", "%Y %b %d", "%Y %B %d",
                "%a %b %d %Y", "%Y%m%d")
_FORMATS = tuple(day + clock for day in _DAY_FORMATS
                 for clock in ("", " %H:%M", " %H:%M:%S", " %I:%M %p", " %I:%M:%S %p"))
_UTC_SUFFIX = re.compile(r"\s+(?:UTC|GMT|Z)$", re.I)
_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z
#: Longest amount of time read ("1 year 2 months 3 weeks 4 days 5 hours 6 minutes" is 46).
MAX_AMOUNT = 200


class Unreadable(ValueError):
    """A value that is not a date in any form `to_time` reads."""


@functools.lru_cache(maxsize=64)
def zone(name: str) -> dt.tzinfo:
    """The time zone named `name` (IANA), raising ValueError for an unknown one."""
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: "Europe"
        raise ValueError(f"unknown time zone {name!r}") from None


def to_time(value: Any, tz: dt.tzinfo, now: Callable[[], float]) -> dt.datetime | None:
    """An aware datetime for a date filter input (None when it is nil or empty).

    Accepts "now", "now ± N unit", epoch seconds (numbers or digit strings), ISO 8601,
    Ruby's `Time#to_s`, RFC 2822 and a few written forms; naive times are in `tz`.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Unreadable(f"cannot read a date from {value!r}")
    if isinstance(value, (int, float)):
        return _from_epoch(value, tz)
    if isinstance(value, dt.datetime):
        return value.astimezone(tz) if value.tzinfo else value.replace(tzinfo=tz)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=tz)
    text = str(value).strip()
    relative = _NOW.match(text)
    if relative:
        current = dt.datetime.fromtimestamp(now(), tz)
        sign, amount = relative.groups()
        return advance(current, amount, negative=sign == "-") if sign else current
    if _EPOCH.match(text):
        return _from_epoch(float(text) if "." in text else int(text), tz)
    parsed = _parse_text(text)
    if parsed is None:
        raise Unreadable(f"cannot read a date from {text[:60]!r}")
    return parsed.astimezone(tz) if parsed.tzinfo else parsed.replace(tzinfo=tz)


def _from_epoch(seconds: float, tz: dt.tzinfo) -> dt.datetime:
    if abs(seconds) > _MAX_EPOCH:
        raise ValueError(f"timestamp {seconds} is out of range")
    return dt.datetime.fromtimestamp(seconds, tz)


def _parse_text(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        pass
    ruby = _RUBY_TIME.match(text)
    if ruby:
        day, clock, offset = ruby.groups()
        offset = "+00:00" if offset in (None, "UTC", "Z") else offset
        try:
            parsed = dt.datetime.fromisoformat(f"{day}T{clock}{offset}")
        except ValueError:
            return None
        return parsed if ruby.group(3) else parsed.replace(tzinfo=None)
    bare = _UTC_SUFFIX.sub("", text)
    for fmt in _FORMATS:
        try:
            parsed = dt.datetime.strptime(bare, fmt)
        except ValueError:
            continue
        return parsed.replace(tzinfo=UTC) if bare != text else parsed
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def parse_amounts(text: str) -> dict[str, float]:
    """`"1 year, 6 months"` as `{"years": 1, "months": 6}` (signed; units singular or plural)."""
    if not isinstance(text, str):
        raise ValueError(f"expected an amount of time like '1 day', got {text!r}")
    if len(text) > MAX_AMOUNT:  # _AMOUNT is quadratic on long runs of spaces
        raise ValueError(f"an amount of time longer than {MAX_AMOUNT} characters")
    out: dict[str, float] = {}
    last = 0
    for found in _AMOUNT.finditer(text):
        unit = found.group(3).lower()
        unit = _UNITS.get(unit.removesuffix("s"), _UNITS.get(unit, ""))
        if not unit or not _SEPARATOR.match(text[last:found.start()]):
            raise ValueError(f"cannot read an amount of time from {text!r}")
        number = float(found.group(2))
        out[unit] = out.get(unit, 0) + (-number if found.group(1) == "-" else number)
        last = found.end()
    if not out or not _SEPARATOR.match(text[last:]):
        raise ValueError(f"cannot read an amount of time from {text!r}")
    return out


def advance(time: dt.datetime, amounts: str, *, negative: bool = False) -> dt.datetime:
    """`time` moved by `amounts`: years, months, weeks and days on the calendar (month ends
    clamp: Jan 31 + 1 month = Feb 28/29), hours, minutes and seconds as elapsed time."""
    parts = parse_amounts(amounts)
    sign = -1 if negative else 1
    months = sign * (parts.get("years", 0) * 12 + parts.get("months", 0))
    if months != int(months):
        raise ValueError(f"years and months must be whole numbers in {amounts!r}")
    tz = time.tzinfo
    local = time.replace(tzinfo=None)
    if months:
        index = local.year * 12 + local.month - 1 + int(months)
        year, month = divmod(index, 12)
        if not 1 <= year <= 9999:
            raise ValueError("the date is out of range")
        day = min(local.day, calendar.monthrange(year, month + 1)[1])
        local = local.replace(year=year, month=month + 1, day=day)
    days = sign * (parts.get("weeks", 0) * 7 + parts.get("days", 0))
    seconds = sign * (parts.get("hours", 0) * 3600 + parts.get("minutes", 0) * 60
                      + parts.get("seconds", 0))
    try:
        local += dt.timedelta(days=days)
        moved = local.replace(tzinfo=tz)
        if seconds:
            moved = (moved.astimezone(UTC) + dt.timedelta(seconds=seconds)).astimezone(tz)
    except OverflowError:
        raise ValueError("the date is out of range") from None
    return moved


def _start(time: dt.datetime, month: int | None = None, day: int | None = None) -> dt.datetime:
    return time.replace(month=month or time.month, day=day or time.day, hour=0, minute=0,
                        second=0, microsecond=0)


def _end(time: dt.datetime, month: int | None = None, day: int | None = None) -> dt.datetime:
    return time.replace(month=month or time.month, day=day or time.day, hour=23, minute=59,
                        second=59, microsecond=999999)


def _weekday(value: Any, default: str) -> int:
    name = default if value is True else str(value).lower()
    if name not in _WEEKDAYS:
        raise ValueError(f"unknown weekday {value!r}")
    return _WEEKDAYS.index(name)


def _quarter_start(time: dt.datetime, _: Any) -> dt.datetime:
    return _start(time, (time.month - 1) // 3 * 3 + 1, 1)


def _quarter_end(time: dt.datetime, _: Any) -> dt.datetime:
    month = (time.month - 1) // 3 * 3 + 3
    return _end(time, month, calendar.monthrange(time.year, month)[1])


def _week_start(time: dt.datetime, day: Any) -> dt.datetime:
    return _start(time - dt.timedelta(days=(time.weekday() - _weekday(day, "monday")) % 7))


def _week_end(time: dt.datetime, day: Any) -> dt.datetime:
    return _end(time + dt.timedelta(days=(_weekday(day, "sunday") - time.weekday()) % 7))


#: Mechanic applies these in this order, whatever order the template gave them in.
_STEPS: tuple[tuple[str, Callable[[dt.datetime, Any], dt.datetime]], ...] = (
    ("beginning_of_year", lambda t, _: _start(t, 1, 1)),
    ("end_of_year", lambda t, _: _end(t, 12, 31)),
    ("beginning_of_quarter", _quarter_start),
    ("end_of_quarter", _quarter_end),
    ("beginning_of_month", lambda t, _: _start(t, day=1)),
    ("end_of_month", lambda t, _: _end(t, day=calendar.monthrange(t.year, t.month)[1])),
    ("beginning_of_week", _week_start),
    ("end_of_week", _week_end),
    ("beginning_of_day", lambda t, _: _start(t)),
    ("middle_of_day", lambda t, _: t.replace(hour=12, minute=0, second=0, microsecond=0)),
    ("end_of_day", lambda t, _: _end(t)),
    ("advance", lambda t, amounts: advance(t, amounts)),
)


def _apply(time: dt.datetime, options: Mapping[str, Any]) -> dt.datetime:
    for name, step in _STEPS:
        value = options.get(name)
        if value is not None and value is not False and value != "":
            time = step(time, value)
    # Wall-clock edits can land in a DST gap: normalise through UTC.
    return time.astimezone(UTC).astimezone(time.tzinfo)


_OPTIONS = frozenset({"tz", *(name for name, _ in _STEPS)})


def date(value: Any, fmt: Any = None, *, tz: dt.tzinfo, now: Callable[[], float],
         options: Mapping[str, Any]) -> Any:
    """`date[: fmt]` with Mechanic's options; nil, "" and what cannot be read as a date pass
    through unchanged.

    `tz` is the configured time zone: a time without an offset is read in it; the `tz:` option
    converts the time to another zone (`"2000-01-01" | date: tz: "UTC"` in America/Chicago is
    `2000-01-01T06:00:00Z`). `now` returns epoch seconds. Without a format the result is ISO
    8601 with the zone's offset.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r}")
    target = zone(str(options["tz"])) if options.get("tz") not in (None, "") else tz
    try:
        time = to_time(value, tz, now)
    except Unreadable:
        return value  # as Shopify's date filter does with what it cannot read
    if time is None:
        return value
    time = time.astimezone(target)
    time = _apply(time, options)
    if fmt is None or fmt == "":
        return iso8601(time)
    return strftime(time, str(fmt))


def iso8601(time: dt.datetime) -> str:
    """Ruby's `Time#iso8601`: seconds precision, `Z` for UTC, else the offset."""
    text = time.replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if time.tzinfo is UTC else text


def parse_date(value: Any, fmt: Any, *, tz: dt.tzinfo) -> str | None:
    """`parse_date: fmt`: text read with a strptime format, in `tz`, as ISO 8601; nil on failure."""
    if not isinstance(value, str) or not isinstance(fmt, str):
        return None
    try:
        parsed = dt.datetime.strptime(value.strip(), _strptime_format(fmt))
    except ValueError:
        return None
    return iso8601(parsed.astimezone(tz) if parsed.tzinfo else parsed.replace(tzinfo=tz))


def _strptime_format(fmt: str) -> str:
    fmt = re.sub(r"%[-_0^#]+", "%", fmt)
    for ruby, python in (("%e", "%d"), ("%k", "%H"), ("%l", "%I"), ("%P", "%p"), ("%L", "%f"),
                         ("%N", "%f"), ("%F", "%Y-%m-%d"), ("%T", "%H:%M:%S"), ("%R", "%H:%M"),
                         ("%D", "%m/%d/%y"), ("%h", "%b")):
        fmt = fmt.replace(ruby, python)
    return fmt.replace("%:z", "%z")


# --- Ruby's strftime -----------------------------------------------------------------------

_DIRECTIVE = re.compile(r"%([-_0^#]*)(\d*)(::?z|[a-zA-Z%+])")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_COMPOSITE = {"c": "%a %b %e %H:%M:%S %Y", "D": "%m/%d/%y", "x": "%m/%d/%y", "F": "%Y-%m-%d",
              "T": "%H:%M:%S", "X": "%H:%M:%S", "R": "%H:%M", "r": "%I:%M:%S %p",
              "v": "%e-%^b-%Y", "+": "%a %b %e %H:%M:%S %Z %Y"}


def _offset(time: dt.datetime, colons: int) -> str:
    total = int((time.utcoffset() or dt.timedelta()).total_seconds())
    sign = "-" if total < 0 else "+"
    hours, rest = divmod(abs(total), 3600)
    minutes, seconds = divmod(rest, 60)
    if colons == 0:
        return f"{sign}{hours:02d}{minutes:02d}"
    if colons == 1:
        return f"{sign}{hours:02d}:{minutes:02d}"
    return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"


def _iso(time: dt.datetime) -> tuple[int, int, int]:
    return tuple(time.isocalendar())  # type: ignore[return-value]


#: Numeric directives: time -> (value, default width, default padding).
_NUMERIC: dict[str, Callable[[dt.datetime], tuple[int, int, str]]] = {
    "Y": lambda t: (t.year, 4, "0"), "C": lambda t: (t.year // 100, 2, "0"),
    "y": lambda t: (t.year % 100, 2, "0"), "m": lambda t: (t.month, 2, "0"),
    "d": lambda t: (t.day, 2, "0"), "e": lambda t: (t.day, 2, " "),
    "j": lambda t: (t.timetuple().tm_yday, 3, "0"), "H": lambda t: (t.hour, 2, "0"),
    "k": lambda t: (t.hour, 2, " "), "I": lambda t: ((t.hour - 1) % 12 + 1, 2, "0"),
    "l": lambda t: ((t.hour - 1) % 12 + 1, 2, " "), "M": lambda t: (t.minute, 2, "0"),
    "S": lambda t: (t.second, 2, "0"), "L": lambda t: (t.microsecond // 1000, 3, "0"),
    "u": lambda t: (t.isoweekday(), 1, "0"), "w": lambda t: (t.isoweekday() % 7, 1, "0"),
    "U": lambda t: (int(t.strftime("%U")), 2, "0"), "W": lambda t: (int(t.strftime("%W")), 2, "0"),
    "G": lambda t: (_iso(t)[0], 4, "0"), "g": lambda t: (_iso(t)[0] % 100, 2, "0"),
    "V": lambda t: (_iso(t)[1], 2, "0"), "s": lambda t: (int(t.timestamp()), 1, "0"),
    "Q": lambda t: (int(t.timestamp() * 1000), 1, "0"),
}

#: Textual directives: time -> text.
_TEXTUAL: dict[str, Callable[[dt.datetime], str]] = {
    "B": lambda t: _MONTHS[t.month - 1], "b": lambda t: _MONTHS[t.month - 1][:3],
    "h": lambda t: _MONTHS[t.month - 1][:3], "A": lambda t: _DAYS[t.weekday()],
    "a": lambda t: _DAYS[t.weekday()][:3], "p": lambda t: "PM" if t.hour >= 12 else "AM",
    "P": lambda t: "pm" if t.hour >= 12 else "am", "Z": lambda t: t.tzname() or "",
    "z": lambda t: _offset(t, 0), ":z": lambda t: _offset(t, 1), "::z": lambda t: _offset(t, 2),
    "n": lambda t: "\n", "t": lambda t: "\t", "%": lambda t: "%",
    "N": lambda t: f"{t.microsecond:06d}000",
}


def strftime(time: dt.datetime, fmt: str) -> str:
    """Ruby's `Time#strftime` (flags `-_0^#`, widths, `%s`, `%L`, `%N`, `%:z`, composites)."""

    def one(found: re.Match[str]) -> str:
        flags, width, code = found.groups()
        if code in _COMPOSITE:
            text = strftime(time, _COMPOSITE[code])
            return _pad(text.upper() if "^" in flags else text, flags, width, " ")
        numeric = _NUMERIC.get(code)
        if numeric is not None:
            number, default_width, pad = numeric(time)
            if "-" in flags:
                return str(number)
            pad = " " if "_" in flags else "0" if "0" in flags else pad
            size = int(width) if width else default_width
            return (str(number).rjust(size, pad) if number >= 0
                    else "-" + str(-number).rjust(size - 1, pad))
        textual = _TEXTUAL.get(code)
        if textual is None:
            return found.group(0)
        text = textual(time)
        if code == "N" and width:
            text = text[: int(width)].ljust(int(width), "0")
            width = ""
        if "^" in flags:
            text = text.upper()
        elif "#" in flags:
            text = text.lower() if code == "p" else text.swapcase()
        return _pad(text, flags, width, " ")

    return _DIRECTIVE.sub(one, fmt)


def _pad(text: str, flags: str, width: str, pad: str) -> str:
    if not width or "-" in flags:
        return text
    return text.rjust(int(width), "0" if "0" in flags else pad)
