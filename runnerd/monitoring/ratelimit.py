"""Token buckets by key, in memory (one process): how many pings a monitor or a client may send.

A bucket holds a minute's worth of requests (`per_minute`, the burst) and refills at
`per_minute / 60` a second, so an idle bucket is full again after 60 s at most; such a bucket is
the same as none, and `Buckets` forgets it once it holds more than `max_keys` keys. Time is a
parameter (`now`, seconds); a clock going back refills nothing.
"""

from __future__ import annotations

#: Seconds after which any bucket is full again (it holds one minute of refill).
REFILL_SECONDS = 60.0


class Buckets:
    """One token bucket per key."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str, per_minute: int, now: float) -> float:
        """Take one request from `key`'s bucket: 0.0 when allowed, else the seconds to wait.

        `per_minute` 0 means no limit (nothing is kept).
        """
        if per_minute <= 0:
            return 0.0
        capacity, refill = float(per_minute), per_minute / REFILL_SECONDS
        tokens, at = self._buckets.pop(key, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - at) * refill)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)  # last: the newest
        if len(self._buckets) > self.max_keys:
            self._forget(now)
        return 0.0 if allowed else (1.0 - tokens) / refill

    def _forget(self, now: float) -> None:
        """Drop the full buckets; if too many are still in use, the least recently used half."""
        self._buckets = {k: v for k, v in self._buckets.items()
                         if now - v[1] < REFILL_SECONDS}
        if len(self._buckets) > self.max_keys:
            keep = list(self._buckets.items())[len(self._buckets) // 2:]
            self._buckets = dict(keep)

    def __len__(self) -> int:
        return len(self._buckets)
