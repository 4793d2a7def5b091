"""How long a filter's result would be, worked out without building it.

A filter whose result can be longer than its input (`replace` with a longer replacement,
`append`, `join`, `escape`, `base64_encode`, `json`, `date: "%99999999Y"` …) would let a short
template build a string of gigabytes before the output limit saw it. The renderer calls the
function here first and refuses the filter when the length passes the output cap. `gunzip` and
`scan` cannot know their size beforehand: they stop themselves, raising `TooLarge`. `gzip` is
left out: its result is at most a third longer than its input, and compressing base64 wins that
back, so a chain of them cannot grow.

Lengths are in characters (a lower bound of the UTF-8 bytes, as the `assign` check counts),
arrays in items; exact where that is cheap, else an upper bound. Nested data is measured by a
walk that stops once past the cap, so a value that shares one array many times over (each
`push: a` onto `a` doubles what it prints) costs at most `cap` steps. Each function takes the
cap, then the filter's arguments as the template gave them; an argument of a kind the filter
refuses measures 0, and the filter reports its own error.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class TooLarge(ValueError):
    """A filter's result would be longer than the output cap."""


#: Characters JSON writes escaped (as \\uXXXX at most: 6 characters for 1).
_JSON_ESCAPED = dict.fromkeys([*range(32), ord('"'), ord("\\")])
#: Characters `escape` and `escape_once` write as an entity (`&quot;` at most: 6 for 1).
_HTML_ESCAPED = dict.fromkeys(map(ord, "&<>\"'"))
#: Characters Liquid's `escapejs` writes as \\uXXXX (6 for 1).
_JS_ESCAPED = dict.fromkeys([*range(32), *map(ord, "\\'\"<>&=-;`\u2028\u2029")])
#: Bytes `url_encode` keeps as they are (a space becomes `+`); any other byte becomes `%XX`.
_URL_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~ "
#: How deep Liquid's array filters flatten nested arrays (python-liquid's `flatten`).
_FLATTEN_LEVELS = 5


def _count(text: str, table: dict[int, None]) -> int:
    """How many characters of `text` are keys of `table`."""
    return len(text) - len(text.translate(table))


def _json_string(text: str) -> int:
    if text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2
    return len(text) + 2 + 5 * _count(text, _JSON_ESCAPED)


def data(cap: int, value: Any) -> int:
    """The length of `value` as compact JSON (an upper bound), counted only up to past `cap`.

    Also bounds how long Liquid prints the value (Python's text of arrays and hashes)."""
    total, stack = 0, [value]
    while stack and total <= cap:
        item = stack.pop()
        if hasattr(item, "__liquid__"):
            item = item.__liquid__()
        if isinstance(item, str):
            total += _json_string(item)
        elif isinstance(item, Mapping):
            total += 1 + len(item)
            for key, child in item.items():
                total += _json_string(key if isinstance(key, str) else str(key)) + 1
                stack.append(child)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 1 + len(item)
            stack.extend(item)
        elif isinstance(item, range):
            total += 2 * len(item) + 1
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, (float, decimal.Decimal)):
            total += 26
        else:
            total += _json_string(str(item))
    return total


def _text(cap: int, value: Any) -> str:
    """The text a string filter makes of `value`; TooLarge when it is nested data that would
    print longer than `cap`."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)) and data(cap, value) > cap:
        raise TooLarge
    return "" if value is None else str(value)


def _arg(args: tuple[Any, ...], index: int, default: Any = "") -> Any:
    return args[index] if len(args) > index else default


def replace(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`replace: old, new`: every occurrence of `old` (between every character when empty)."""
    text, old, new = (_text(cap, v) for v in (value, _arg(args, 0), _arg(args, 1)))
    count = text.count(old) if old else len(text) + 1
    return len(text) + count * (len(new) - len(old))


def replace_one(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`replace_first`/`replace_last: old, new`: one occurrence (at most `new` longer)."""
    return len(_text(cap, value)) + len(_text(cap, _arg(args, 1)))


def concatenate(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`append`/`prepend: text`: both texts."""
    return len(_text(cap, value)) + len(_text(cap, _arg(args, 0)))


def newline_to_br(cap: int, value: Any, *_: Any, **__: Any) -> int:
    """`newline_to_br`: `<br />` added before each line break."""
    text = _text(cap, value)
    return len(text) + 6 * text.count("\n")


def _escaped(table: dict[int, None]) -> Callable[..., int]:
    def size(cap: int, value: Any, *_: Any, **__: Any) -> int:
        text = _text(cap, value)
        return len(text) + 5 * _count(text, table)

    return size


def url_encode(cap: int, value: Any, *_: Any, **__: Any) -> int:
    """`url_encode`: each byte other than letters, digits, `_.-~` and space as `%XX`."""
    raw = _text(cap, value).encode()
    return len(raw) + 2 * len(raw.translate(None, _URL_SAFE))


def _base64(length: int) -> int:
    return (length + 2) // 3 * 4


def base64_encode(cap: int, value: Any, *_: Any, **__: Any) -> int:
    """`base64_encode` and its aliases: 4 characters for every 3 bytes of UTF-8."""
    return _base64(len(_text(cap, value).encode()))


#: A strftime directive with a width (Ruby pads `%10Y` to ten characters).
_WIDTH = re.compile(r"%[-_0^#]*(\d+)")
#: The longest text one directive writes without a width (`%c` is 24, a zone name up to ~30).
_DIRECTIVE = 32


def date(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`date: format`: each directive at its width, or at most `_DIRECTIVE` characters."""
    fmt = _arg(args, 0, None)
    if not isinstance(fmt, str):
        return 0
    widths = sum(int(width) if len(width) < 10 else cap + 1 for width in _WIDTH.findall(fmt))
    return len(fmt) + _DIRECTIVE * fmt.count("%") + widths


def json(cap: int, value: Any, *_: Any, **__: Any) -> int:
    """`json`: the value as compact JSON (upper bound)."""
    return data(cap, value)


def csv(cap: int, value: Any, *_: Any, **__: Any) -> int:
    """`csv`: every field quoted with its quotes doubled, a delimiter after each (upper bound;
    nested data as JSON)."""
    if not isinstance(value, (list, tuple)):
        return 0
    total = 1
    for row in value:
        if total > cap:
            break
        for field in row if isinstance(row, (list, tuple)) else ():
            text = field if isinstance(field, str) else None
            total += (2 * len(text) if text is not None else 2 * data(cap, field)) + 3
    return total


def _leaves(value: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    """The items Liquid's array filters see in `value`: nested arrays flattened to
    python-liquid's depth."""
    stack = [(value, _FLATTEN_LEVELS)]
    while stack:
        sequence, level = stack.pop()
        for item in sequence:
            if level and isinstance(item, (list, tuple)):
                stack.append((item, level - 1))
            else:
                yield item


def _flattened(cap: int, value: Any) -> int:
    """How many items Liquid's array filters see in `value`, counted only up to past `cap`."""
    if not isinstance(value, (list, tuple)):
        return 1
    total = 0
    for _ in _leaves(value):
        total += 1
        if total > cap:
            break
    return total


def items(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """Liquid's array filters (`map`, `where`, `sort`, `uniq` …): the flattened input."""
    return _flattened(cap, value)


def concat(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`concat: array`: the flattened input and the other array."""
    other = _arg(args, 0, ())
    return _flattened(cap, value) + (len(other) if isinstance(other, (list, tuple)) else 0)


def push(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`push`/`unshift: a, b`: the array and the new items."""
    return (len(value) if isinstance(value, (list, tuple)) else 0) + len(args)


def join(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`join: separator`: the flattened items' texts and a separator between each two."""
    if not isinstance(value, (list, tuple)):
        return 0
    count = _flattened(cap, value)
    total = max(count - 1, 0) * len(_text(cap, _arg(args, 0, " ")))
    for item in _leaves(value):
        if total > cap:
            break
        total += len(_text(cap, item))
    return total


def times(cap: int, value: Any, *args: Any, **_: Any) -> int:
    """`times: n`: the product of two integers, in bytes."""
    other = _arg(args, 0, 0)
    if isinstance(value, int) and isinstance(other, int):
        return (value.bit_length() + other.bit_length()) // 8
    return 0


_ARRAY_FILTERS = ("map", "reverse", "sort", "sort_natural", "where", "reject", "find",
                  "find_index", "has", "uniq")

#: Size functions by Liquid filter name (runnerd's and Liquid's standard filters).
SIZES: dict[str, Callable[..., int]] = {
    "replace": replace,
    "replace_first": replace_one,
    "replace_last": replace_one,
    "append": concatenate,
    "prepend": concatenate,
    "newline_to_br": newline_to_br,
    "escape": _escaped(_HTML_ESCAPED),
    "escape_once": _escaped(_HTML_ESCAPED),
    "escapejs": _escaped(_JS_ESCAPED),
    "url_encode": url_encode,
    "base64_encode": base64_encode,
    "base64": base64_encode,
    "base64_url_safe_encode": base64_encode,
    "base64url": base64_encode,
    "date": date,
    "json": json,
    "jsonl": json,
    "csv": csv,
    "join": join,
    "concat": concat,
    "push": push,
    "unshift": push,
    "times": times,
    **dict.fromkeys(_ARRAY_FILTERS, items),
}
