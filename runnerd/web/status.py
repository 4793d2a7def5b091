"""GET /status: a server-rendered status page with inline SVG charts of the last 24 hours.

No external assets, no scripts; `<meta http-equiv=refresh>` reloads it. It shows names, states,
counts and times only: never an event's data, an action's options, a result or an error text
(those can carry payloads and secrets: `runnerd runs show ID` is the operator's way in).

The samples are cheap whatever the history: the newest `SAMPLE_RUNS` runs by rowid, failures on
the partial index of failed runs, queue depth on the partial indexes of queued states.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from runnerd import models
from runnerd.config import cron
from runnerd.monitoring import metrics
from runnerd.store import db

SAMPLE_RUNS = 20_000
HOURS = 24
REFRESH_SECONDS = 30
_E = html.escape


def gather(tx: db.Tx, now: float) -> dict[str, Any]:
    """Everything the page shows, read in one snapshot."""
    since = now - HOURS * 3600
    return {
        "runs": tx.all("recent_runs", {"since": since, "limit": SAMPLE_RUNS}),
        "failures": tx.all("failures_since", {"since": since}),
        "status": tx.all("status_all"),
        "flips": tx.all("flips_recent", {"since": since}),
        "queue": metrics.snapshot(tx, now),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def series(rows: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """Per-hour buckets (oldest first) of outcomes, boot times and round trips."""
    start = now - HOURS * 3600

    def bucket(t: float | None) -> int | None:
        if t is None or t < start or t > now:
            return None
        return min(HOURS - 1, int((t - start) // 3600))

    done = [[0, 0] for _ in range(HOURS)]
    boot: list[list[float]] = [[] for _ in range(HOURS)]
    events: dict[str, list[Any]] = {}
    for r in rows:
        b = bucket(r["finished_at"])
        if b is not None and r["state"] in ("succeeded", "failed"):
            done[b][r["state"] == "failed"] += 1
        b = bucket(r["started_at"])
        if b is not None:
            boot[b].append(max(0.0, r["started_at"] - r["run_at"]))
        ev = events.setdefault(r["event_id"], [r["event_created_at"], 0.0, True])
        if r["state"] in ("succeeded", "failed") and r["finished_at"] is not None:
            ev[1] = max(ev[1], r["finished_at"])
        else:
            ev[2] = False
    trips: list[list[float]] = [[] for _ in range(HOURS)]
    for created, finished, complete in events.values():
        b = bucket(created)
        if complete and b is not None and finished:
            trips[b].append(max(0.0, finished - created))
    all_boot = [x for xs in boot for x in xs]
    all_trips = [x for xs in trips for x in xs]
    return {
        "done": done,
        "boot": [(percentile(xs, 50), percentile(xs, 95)) for xs in boot],
        "trips": [(percentile(xs, 50), percentile(xs, 95)) for xs in trips],
        "boot_p50": percentile(all_boot, 50), "boot_p95": percentile(all_boot, 95),
        "trip_p50": percentile(all_trips, 50), "trip_p95": percentile(all_trips, 95),
        "finished": sum(a + b for a, b in done), "failed": sum(b for _, b in done),
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    age = max(0.0, now - ts)
    text = (f"{age:.0f} s" if age < 120 else f"{age / 60:.0f} min" if age < 7200
            else f"{age / 3600:.1f} h" if age < 172800 else f"{age / 86400:.0f} d")
    return f'<time datetime="{models.iso(ts)}">{text} ago</time>'


W, H, PAD = 720, 140, 24


def bar_chart(done: Sequence[Sequence[int]], title: str) -> str:
    """Stacked bars per hour: succeeded (green) under failed (red)."""
    top = max([a + b for a, b in done] + [1])
    slot = (W - 2 * PAD) / len(done)
    parts = []
    for i, (ok, bad) in enumerate(done):
        x = PAD + i * slot + 1
        h_ok, h_bad = (H - 2 * PAD) * ok / top, (H - 2 * PAD) * bad / top
        y = H - PAD - h_ok
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot - 2:.1f}" height="{h_ok:.1f}" '
                     f'fill="#3a9a5b"><title>{ok} succeeded</title></rect>')
        if bad:
            parts.append(f'<rect x="{x:.1f}" y="{y - h_bad:.1f}" width="{slot - 2:.1f}" '
                         f'height="{h_bad:.1f}" fill="#c8423b"><title>{bad} failed</title></rect>')
    return _frame(title, f"max {top}/h", "".join(parts))


def line_chart(points: Sequence[tuple[float | None, float | None]], title: str) -> str:
    """p50 (solid) and p95 (dashed) per hour; gaps where an hour has no sample."""
    top = max([p for pair in points for p in pair if p is not None] + [0.001])
    slot = (W - 2 * PAD) / len(points)
    lines = []
    for index, style in ((0, 'stroke="#2b6cb0"'), (1, 'stroke="#9c6ade" stroke-dasharray="4 3"')):
        coords = []
        for i, pair in enumerate(points):
            point = pair[index]
            if point is not None:
                y = H - PAD - (H - 2 * PAD) * point / top
                coords.append(f"{PAD + (i + 0.5) * slot:.1f},{y:.1f}")
        if coords:
            lines.append(f'<polyline fill="none" stroke-width="2" {style} '
                         f'points="{" ".join(coords)}"/>')
            lines += [f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.5" '
                      f'fill="{"#2b6cb0" if index == 0 else "#9c6ade"}"/>' for c in coords]
    return _frame(title, f"max {_seconds(top)}", "".join(lines))


def _frame(title: str, scale: str, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" '
            f'height="{H}" role="img" aria-label="{_E(title)}"><title>{_E(title)}</title>'
            f'<rect width="{W}" height="{H}" fill="#fafafa" stroke="#ddd"/>'
            f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>'
            f'<text x="{PAD}" y="16" font-size="12">{_E(title)}</text>'
            f'<text x="{W - PAD}" y="16" font-size="11" text-anchor="end">{_E(scale)}</text>'
            f'<text x="{PAD}" y="{H - 6}" font-size="10">24 h ago</text>'
            f'<text x="{W - PAD}" y="{H - 6}" font-size="10" text-anchor="end">now</text>'
            f"{body}</svg>")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f"<p class=muted>{_E(empty)}</p>"
    head = "".join(f"<th>{_E(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _state(state: str | None) -> str:
    state = state or "–"
    return f'<span class="s s-{_E(state)}">{_E(state)}</span>'


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:760px;color:#222;
padding:0 .5em}h1{font-size:1.4em;padding:.3em .5em;border-radius:4px}h1.ok{background:#d4f0dc}
h1.bad{background:#f6d2cf}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{padding:3px 6px;border-bottom:1px solid #eee;
text-align:left}.muted{color:#777}.kpi{display:inline-block;margin:0 1.5em .5em 0}
.kpi b{display:block;font-size:1.3em}.s{padding:1px 6px;border-radius:3px;background:#eee}
.s-up,.s-succeeded,.s-ok{background:#d4f0dc}.s-down,.s-failed,.s-unhealthy{background:#f6d2cf}
.s-late,.s-started{background:#fbeccb}.s-paused{background:#ddd}svg{display:block;margin:.5em 0;
max-width:100%;height:auto}td:first-child{overflow-wrap:anywhere}.s{white-space:nowrap}
@media (max-width:480px){body{font-size:13px}td,th{padding:2px 3px}.kpi{margin-right:.9em}}"""


def headline(status_rows: Sequence[Mapping[str, Any]], health: Mapping[str, Any]) -> str:
    """"all OK", or what is not: monitors down, tasks failing, the daemon unhealthy (pure)."""
    down = sum(1 for r in status_rows if r["monitor"] is not None and r["state"] == "down")
    failing = sum(1 for r in status_rows if _is_task(r) and r["last_status"] == "failed")
    problems = []
    if down:
        problems.append(f"{down} monitor{'s' if down > 1 else ''} down")
    if failing:
        problems.append(f"{failing} task{'s' if failing > 1 else ''} failing")
    if health.get("status") != "ok":
        problems.append(f"daemon {health.get('status', 'unhealthy')}")
    return ", ".join(problems) if problems else "all OK"


def _is_task(row: Mapping[str, Any]) -> bool:
    """A task's row: no monitor, or a task monitor (a ping monitor's row is not a task's)."""
    return row["monitor"] is None or bool(models.loads(row["monitor"]).get("task"))


def _expects(monitor: Mapping[str, Any]) -> str:
    schedule = monitor.get("schedule")
    expect = (f"every {_seconds(monitor['period'])}" if monitor.get("period") or not schedule
              else f"<code>{_E(schedule)}</code>: {_E(cron.describe(cron.parse(schedule)))}")
    return f"{expect}, grace {_seconds(monitor['grace'])}"


def _listed(data: Mapping[str, Any], now: float) -> tuple[list[list[str]], list[list[str]]]:
    """Monitor and task rows: every configured one (never-ran ones too), down and failing
    first."""
    rows = {r["name"]: r for r in data["status"]}
    monitors, tasks = [], []
    for name in sorted(set(data.get("monitors", ())) | {n for n, r in rows.items()
                                                          if r["monitor"] is not None}):
        r = rows.get(name)
        monitor = models.loads(r["monitor"]) if r is not None and r["monitor"] else None
        state = r["state"] if r is not None else "new"
        took = r["last_duration"] if r is not None else None
        monitors.append((state != "down", [
            _E(name), _state(state), _ago(r["last_success_at"] if r else None, now),
            _ago(r["last_run_at"] if r else None, now)
            + ("" if took is None else f" (took {_seconds(took)})"),
            _expects(monitor) if monitor else "–"]))
    for name in sorted(set(data.get("tasks", ())) | {n for n, r in rows.items() if _is_task(r)}):
        r = rows.get(name)
        last = r["last_status"] if r is not None else None
        tasks.append((last != "failed", [
            _E(name), _state(last or "never"), _ago(r["last_run_at"] if r else None, now),
            _ago(r["last_success_at"] if r else None, now),
            _ago(r["last_failure_at"] if r else None, now)]))
    return ([row for _, row in sorted(monitors, key=lambda x: x[0])],
            [row for _, row in sorted(tasks, key=lambda x: x[0])])


def render(data: Mapping[str, Any], health: Mapping[str, Any], now: float, *,
           console: bool = False) -> str:
    """The page (pure: data from `gather` with the configured `tasks` and `monitors` names,
    health from the heartbeat); `console`: the browser is signed in to the console (a link)."""
    s = series(data["runs"], now)
    snap = data["queue"]
    queue_rows = [[_E(kind), *(str(snap["queue"].get((kind, st), 0))
                               for st in metrics.QUEUE_STATES)] for kind in ("event", "task",
                                                                            "action")]
    failures = [[_E(f["kind"]), _E(f["task_name"] or "–"), _E(f["action_type"] or "–"),
                 str(f["n"]), _ago(f["last_at"], now), str(f["last_id"])]
                for f in data["failures"]]
    monitors, tasks = _listed(data, now)
    flips = [[_E(f["name"]), _state(f["old_state"]) + " → " + _state(f["new_state"]),
              _ago(f["created_at"], now), _E(f["mail_state"])] for f in data["flips"]]
    kpis = [("round trip p50", _seconds(s["trip_p50"])),
            ("round trip p95", _seconds(s["trip_p95"])),
            ("boot p50", _seconds(s["boot_p50"])), ("boot p95", _seconds(s["boot_p95"])),
            ("queue lag", _seconds(snap["lag"])),
            ("due now", str(sum(n for (_, st), n in snap["queue"].items() if st == "due"))),
            ("finished 24 h", str(s["finished"])), ("failed 24 h", str(s["failed"]))]
    problems = "".join(f"<li>{_E(p)}</li>" for p in health.get("problems", []))
    said = headline(data["status"], health)
    ok = said == "all OK"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>runnerd: {_E(said)}</title><style>{_CSS}</style></head><body>
<h1 id="headline" class="{"ok" if ok else "bad"}">runnerd: {_E(said)}</h1>
{'<p><a href="/console/tasks">Open the console</a></p>' if console else ""}
<p class=muted>Generated {models.iso(now)}; refreshes every {REFRESH_SECONDS} s.
Daemon {_state(health.get("status"))}, up {_seconds(health.get("uptime_seconds"))},
{health.get("active_runs", 0)} run(s) in progress,
event-loop lag {_seconds(health.get("loop_lag_seconds"))}.</p>
{f"<ul>{problems}</ul>" if problems else ""}
<section id="monitors"><h2>Monitors</h2>
{_table(["monitor", "state", "last success", "last report", "expects"], monitors,
        "No monitors configured.")}
{_table(["monitor", "flip", "when", "alert"], flips, "No monitor changed state in 24 h.")}
</section>
<section id="tasks"><h2>Tasks</h2>
<p class=muted>A task's status counts its task run and its action runs (an action still retrying
counts neither way).</p>
{_table(["task", "last status", "last run", "last success", "last failure"], tasks,
        "No tasks configured.")}</section>
<section id="failures"><h2>Failures (24 h)</h2>
{_table(["kind", "task", "action", "failed", "last", "last run id"], failures,
        "No failures in the last 24 hours.")}</section>
<section id="summary"><h2>Last 24 hours</h2>
{"".join(f'<span class="kpi">{_E(k)}<b>{v}</b></span>' for k, v in kpis)}
</section>
<section id="timing"><h2>Round trip and run boot time</h2>
<p class=muted>Round trip: an event created → the last of its runs done. Boot: a run due →
started. Solid p50, dashed p95, per hour.</p>
{line_chart(s["trips"], "Round trip (event created → last action done)")}
{line_chart(s["boot"], "Run boot time (due → started)")}
</section>
<section id="throughput"><h2>Runs finished</h2>{bar_chart(s["done"], "Runs finished per hour")}
</section>
<section id="queue"><h2>Queue</h2>
{_table(["kind", *metrics.QUEUE_STATES], queue_rows, "")}
<p>Queue lag (oldest due run): <b>{_seconds(snap["lag"])}</b></p></section>
</body></html>
"""
