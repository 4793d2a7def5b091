"""The expiring key-value cache: storage on a transaction, and the read-only view Liquid sees."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from runnerd import errors, models
from runnerd.store import db

KEY = re.compile(r"^[a-z0-9_:\-./]+\Z", re.IGNORECASE)
MAX_VALUE_BYTES = 256 * 1024
MAX_TTL = 5_184_000  # 60 days: the default and the maximum, as in Mechanic


def check_key(key: Any) -> str:
    """The key, or InvalidAction naming what is wrong with it."""
    if not isinstance(key, str) or not KEY.match(key):
        raise errors.InvalidAction(
            f"cache: bad key {key!r}: use letters, digits and _ : - . / only"
        )
    return key


def check_ttl(ttl: Any) -> int:
    """A TTL in whole seconds, 1 to 5184000 (None means the default, the maximum)."""
    if ttl is None:
        return MAX_TTL
    if isinstance(ttl, str) and ttl.strip().isdigit():
        ttl = int(ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise errors.InvalidAction(f"cache: ttl must be 1 to {MAX_TTL} seconds, got {ttl!r}")
    return int(ttl)


def encode_value(value: Any) -> str:
    """JSON text of a cache value; InvalidAction when over 256 KB."""
    text = models.dumps(value)
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise errors.InvalidAction(f"cache: value is over the {MAX_VALUE_BYTES // 1024} KB limit")
    return text


def get(tx: db.Tx, key: str, now: float) -> Any:
    """The live value of `key`, or None."""
    row = tx.one("cache_get", {"key": key, "now": now})
    return None if row is None else models.loads(row["value"])


def put(tx: db.Tx, key: str, value: Any, ttl: int, now: float) -> None:
    """Store `value` under `key` for `ttl` seconds."""
    tx.execute("cache_set", {"key": key, "value": encode_value(value), "expires_at": now + ttl})


def add(tx: db.Tx, key: str, increment: int, decrement: int, ttl: int,
        now: float) -> Callable[[], int | None]:
    """Add `increment - decrement` to the integer under `key` (0 when absent) in one atomic
    statement, resetting its TTL. The returned function gives the new value, or None (nothing
    written) when the stored value is not a 64-bit integer or the result would leave that
    range; on PostgreSQL calling it is what waits for the answer (`db.Tx.later`)."""
    rows = tx.later("cache_add", {"key": key, "increment": increment, "decrement": decrement,
                                  "expires_at": now + ttl, "now": now})

    def value() -> int | None:
        added = rows()
        return int(added[0]["value"]) if added else None

    return value


def delete(tx: db.Tx, key: str) -> bool:
    """Delete `key`; True if it existed."""
    return tx.execute("cache_del", {"key": key}).rowcount > 0


def purge(tx: db.Tx, now: float) -> int:
    """Delete expired keys; return how many."""
    return tx.execute("cache_purge", {"now": now}).rowcount


class View(Mapping[str, Any]):
    """`cache` in Liquid: `cache["key"]` / `cache.key`, nil when absent or expired."""

    __slots__ = ("_reader", "_now")

    def __init__(self, reader: db.Queries | None, now: float) -> None:
        self._reader = reader
        self._now = now

    def __getitem__(self, key: str) -> Any:
        if self._reader is None or not isinstance(key, str):
            raise KeyError(key)
        row = self._reader.one("cache_get", {"key": key, "now": self._now})
        if row is None:
            raise KeyError(key)
        return models.loads(row[0])

    def __iter__(self) -> Iterator[str]:
        if self._reader is None:
            return iter(())
        return iter([r[0] for r in self._reader.all("cache_keys", {"now": self._now})])

    def __len__(self) -> int:
        return sum(1 for _ in self)
