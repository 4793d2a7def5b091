"""Array and hash filters with Mechanic's semantics (pure functions; inputs are never mutated)."""

from __future__ import annotations

import decimal
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from runnerd.liquid.filters import data

#: `in_groups`/`in_groups_of`/`sample` refuse counts above this (they would allocate that much).
MAX_GROUPS = 100_000

_ARRAY = (list, tuple, range)
_NATURAL = re.compile(r"(\d+)")


def _array(value: Any, name: str = "an array") -> Sequence[Any]:
    if value is None:
        return []
    if isinstance(value, _ARRAY):
        return value
    raise ValueError(f"expected {name}, got {data.kind(value)}")


def _count(value: Any, what: str = "count") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    try:
        number = int(float(value))
    except ValueError:
        raise ValueError(f"{what} must be a positive number, got {value!r}") from None
    if not 0 < number <= MAX_GROUPS:
        raise ValueError(f"{what} must be between 1 and {MAX_GROUPS}, got {number}")
    return number


def keys(value: Any) -> list[Any]:
    """`keys`: a hash's keys; nil has none (as Liquid's array filters read nil as empty)."""
    return [] if value is None else list(_hash(value).keys())


def values(value: Any) -> list[Any]:
    """`values`: a hash's values; nil has none."""
    return [] if value is None else list(_hash(value).values())


def _hash(value: Any) -> Mapping[Any, Any]:
    if isinstance(value, Mapping):
        return value
    raise ValueError(f"expected a hash, got {data.kind(value)}")


def except_(value: Any, *removed: Any) -> Any:
    """`except: v…`: a hash without those keys, or an array without those values."""
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k not in removed}
    return [item for item in _array(value, "a hash or an array") if item not in removed]


def slice_(value: Any, *args: Any) -> Any:
    """`slice`: a hash's given keys (`slice: "a", "b"`), else Shopify's `slice: start[, length]`
    on an array or a string (negative start counts from the end; length defaults to 1)."""
    if isinstance(value, Mapping):
        return {k: value[k] for k in args if k in value}
    if not args or len(args) > 2:
        raise ValueError("expected a start and an optional length")
    start = _int(args[0], "start")
    length = _int(args[1], "length") if len(args) == 2 and args[1] is not None else 1
    seq: Any = value if isinstance(value, (str, list, tuple)) else (
        list(value) if isinstance(value, range) else "" if value is None else str(value))
    if start < 0:
        start += len(seq)
    if start < 0 or start > len(seq) or length < 0:
        return [] if isinstance(seq, (list, tuple)) else ""
    part = seq[start:start + length]
    return list(part) if isinstance(part, tuple) else part


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def concat(value: Any, other: Any) -> list[Any]:
    """`concat: array`: the array followed by the other one (nil is an empty array, another
    single value a one-item array, as Liquid's input iterator reads them)."""
    if not isinstance(other, _ARRAY):
        raise ValueError(f"expected an array to add, got {data.kind(other)}")
    items = [] if value is None else list(value) if isinstance(value, _ARRAY) else [value]
    return items + list(other)


def compact(value: Any, key: Any = None) -> Any:
    """`compact`: an array without nils (or without items whose `key` is nil), or a hash
    without nil values."""
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if v is not None}
    items = _array(value)
    if key is None:
        return [item for item in items if item is not None]
    return [item for item in items if isinstance(item, Mapping) and item.get(key) is not None]


def sum_(value: Any, key: Any = None) -> Any:
    """`sum[: key]`: the sum of an array of numbers (nils are skipped; anything else fails)."""
    total: Any = 0
    for item in _array(value):
        if key is not None:
            item = item.get(key) if isinstance(item, Mapping) else None
        if item is None:
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float, decimal.Decimal)):
            raise ValueError(f"can only sum numbers, found {item!r}")
        total += item
    return float(total) if isinstance(total, decimal.Decimal) else total


def index_by(value: Any, key: Any) -> dict[Any, Any]:
    """`index_by: "key"`: a hash of the array's hashes keyed by their `key` (last one wins)."""
    out: dict[Any, Any] = {}
    for item in _array(value):
        if not isinstance(item, Mapping):
            raise ValueError(f"expected an array of hashes, found {data.kind(item)}")
        index = item.get(key)
        out[index if isinstance(index, (str, int, float, bool)) or index is None
            else str(index)] = item
    return out


def in_groups(value: Any, number: Any, fill_with: Any = None) -> list[list[Any]]:
    """`in_groups: n`: the array split into n groups whose sizes differ by at most one; the
    short groups are padded with `fill_with` (nil) unless `fill_with: false` (Rails)."""
    items = list(_array(value))
    count = _count(number, "number of groups")
    size, extra = divmod(len(items), count)
    groups, start = [], 0
    for i in range(count):
        length = size + (1 if i < extra else 0)
        group = items[start:start + length]
        start += length
        if extra and i >= extra and fill_with is not False:
            group.append(fill_with)
        groups.append(group)
    return groups


def in_groups_of(value: Any, number: Any, fill_with: Any = None) -> list[list[Any]]:
    """`in_groups_of: n`: the array in groups of n; the last is padded with `fill_with` (nil)
    unless `fill_with: false` (Rails)."""
    items = list(_array(value))
    size = _count(number, "group size")
    groups = [items[i:i + size] for i in range(0, len(items), size)]
    if groups and fill_with is not False:
        groups[-1].extend([fill_with] * (size - len(groups[-1])))
    return groups


def push(value: Any, *items: Any) -> list[Any]:
    """`push: a, b`: a new array with the items appended."""
    return [*_array(value), *items]


def unshift(value: Any, *items: Any) -> list[Any]:
    """`unshift: a, b`: a new array with the items prepended."""
    return [*items, *_array(value)]


def sample(value: Any, number: Any = None) -> Any:
    """`sample[: n]`: a random item (nil when empty), or n distinct random items."""
    items = _array(value)
    if number is None:
        return random.choice(items) if items else None
    return random.sample(list(items), min(_count(number, "sample size"), len(items)))


def _natural(text: Any) -> tuple[Any, ...]:
    parts = _NATURAL.split("" if text is None else str(text))
    return tuple((0, int(p), p) if i % 2 else (1, 0, p) for i, p in enumerate(parts))


def sort_naturally(value: Any, key: Any = None) -> list[Any]:
    """`sort_naturally[: key]`: sorted so that "a2" < "a10" (numbers by value, the text
    between them case-sensitively, as the `naturally` gem Mechanic uses)."""
    items = list(_array(value))
    if key is None:
        return sorted(items, key=_natural)
    return sorted(items, key=lambda item: _natural(
        item.get(key) if isinstance(item, Mapping) else None))


