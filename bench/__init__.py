"""runnerd's benchmark (`scripts/bench`): SPEC §12 measured side by side with its peers.

Not part of the runnerd package. This module holds only the pure helpers (statistics, ratios,
the table); the processes live in `bench.procs`, the load generator in `bench.loadgen`, the
peers in `bench.peers`, and the orchestration in `bench.__main__`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return float(data[lo] + (data[hi] - data[lo]) * frac)


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return percentile(values, 50.0)


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(min, max); NaNs for no values."""
    if not values:
        return math.nan, math.nan
    return float(min(values)), float(max(values))


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is zero."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def fmt_num(value: float | None, unit: str = "") -> str:
    """A figure with 3 significant-ish digits: 12345 -> '12.3k', 0.00123 -> '1.23m'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    v = float(value)
    sign = "-" if v < 0 else ""
    v = abs(v)
    if v >= 1e6:
        text = f"{v / 1e6:.2f}M"
    elif v >= 1e4:
        text = f"{v / 1e3:.1f}k"
    elif v >= 100:
        text = f"{v:.0f}"
    elif v >= 10:
        text = f"{v:.1f}"
    else:
        text = f"{v:.2f}"
    return f"{sign}{text}{(' ' + unit) if unit else ''}"


def fmt_ratio(value: float) -> str:
    """A ratio as a percentage below 2, else as a multiple: 0.912 -> '91 %', 3.4 -> '3.40×'."""
    if value is None or math.isnan(value):
        return "n/a"
    if value < 2:
        return f"{value * 100:.0f} %"
    return f"{value:.2f}×"


def fmt_stat(values: Sequence[float], unit: str = "") -> str:
    """'median (min–max)' of repeated measurements, or the single value."""
    if not values:
        return "n/a"
    med = median(values)
    if len(values) == 1:
        return fmt_num(med, unit)
    lo, hi = spread(values)
    return f"{fmt_num(med, unit)} ({fmt_num(lo)}–{fmt_num(hi)})"


@dataclasses.dataclass
class Row:
    """One line of the table: a SPEC §12 row (or a sub-figure of one)."""

    key: str
    what: str
    ours: list[float]
    unit: str = ""
    peer: list[float] = dataclasses.field(default_factory=list)
    peer_name: str = ""
    ratio: float = math.nan  #: ours / peer (or our figure / the figure it is judged against)
    target: str = ""
    passed: bool | None = None  #: None: not judged (informational, or could not be measured)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        return {
            "key": self.key, "what": self.what, "unit": self.unit,
            "ours": {"values": self.ours, "median": clean(median(self.ours)),
                     "min": clean(spread(self.ours)[0]), "max": clean(spread(self.ours)[1])},
            "peer": {"name": self.peer_name, "values": self.peer,
                     "median": clean(median(self.peer)),
                     "min": clean(spread(self.peer)[0]), "max": clean(spread(self.peer)[1])},
            "ratio": clean(self.ratio), "target": self.target, "passed": self.passed,
            "note": self.note,
        }


def verdict(passed: bool | None) -> str:
    return "PASS" if passed is True else "FAIL" if passed is False else "—"


def render_table(rows: Sequence[Row], *, markdown: bool = True) -> str:
    """The one table: figure, peer figure, ratio, target, pass/fail (and notes underneath)."""
    header = ["#", "what", "runnerd: median (min–max)", "baseline: median (min–max)", "ratio",
              "target", "result"]
    body = []
    notes = []
    for row in rows:
        peer = fmt_stat(row.peer, row.unit) if row.peer else "—"
        if row.peer_name and row.peer:
            peer = f"{row.peer_name}: {peer}"
        what = row.what + (f" [{len(notes) + 1}]" if row.note else "")
        if row.note:
            notes.append(row.note)
        body.append([row.key, what, fmt_stat(row.ours, row.unit), peer,
                     fmt_ratio(row.ratio) if not math.isnan(row.ratio) else "—",
                     row.target, verdict(row.passed)])
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    else:
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
                  for cells in body]
    if notes:
        lines.append("")
        lines += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)
