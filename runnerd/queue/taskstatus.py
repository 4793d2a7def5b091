"""The `task_status` rows and monitor states: pure evaluation and the one conditional flip.

One row per task and per monitor keeps the latest facts (FlexMeasures' `latest_task_runs`). A row
with a `monitor` (its spec as JSON, copied from the configuration by `sync`) has a state,
Healthchecks' way:

    new --success--> up --period passes--> late --grace passes--> down
     |                ^                                             |
     |                \\--------------------success----------------/
     \\--failure, or a /start older than grace, from any state--> down
    paused: only `runnerd monitors pause|resume` enter and leave it (resume -> new)

`evaluate(spec, row, now)` is pure. `flip` moves a row with `UPDATE … WHERE state = :old`, so a
change to or from `down` happens once, whoever notices it first (the ticker, a ping, a finishing
run), and in the same transaction writes its `monitor_flips` row and, unless damped, its
`runnerd/monitors/*` event (the flip row is then the durable alert queue's entry).

Flap damping: within `alert_interval` (its spec's) after a monitor's latest alert, a change to
`down`, and every change after one was damped, is damped: its flip row is `damped` (history
only, no event, no email) and `task_status.flaps` counts it. So a down and its recovery alert at
once, and a flapping monitor alerts at most twice per interval. Once the interval has passed,
the next alert (a change, or the ticker's `summarize` if nothing changed) reports the count. Each
monitor keeps its latest `FLIPS_KEPT` flips. This module sits below `runs`: it returns the
events and the caller stores them with `runs.insert_events` in the same transaction.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast
from zoneinfo import ZoneInfo

from runnerd import config, errors, models
from runnerd.config import cron
from runnerd.store import db

DOWN_TOPIC = "runnerd/monitors/down"
UP_TOPIC = "runnerd/monitors/up"
#: The most of a /fail body (or a run's error) kept as `last_error`.
MAX_ERROR_BYTES = 10 * 1024
#: Flips kept per monitor (besides retention); an older one goes as a newer one is written.
FLIPS_KEPT = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """A monitor's expectations, as stored in `task_status.monitor`."""

    grace: float
    period: float | None = None
    schedule: str | None = None
    timezone: str = "UTC"
    task: bool = False  #: fed by a task's runs (else by pings)
    alert_interval: float = 0.0  #: at most one alert per this many seconds (0: every change)

    @classmethod
    def of(cls, monitor: config.Monitor, settings: config.Settings) -> Spec:
        """The spec of a configured monitor."""
        return cls(grace=monitor.grace, period=monitor.period, schedule=monitor.schedule,
                   timezone=settings.timezone, task=monitor.task is not None,
                   alert_interval=settings.monitoring.alert_interval)

    def to_json(self) -> str:
        """The `monitor` column."""
        return models.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Read the `monitor` column."""
        return cls(**json.loads(text))

    def next_expected(self, after: float) -> float:
        """When a success is expected, the last one (or a resume) having been at `after`."""
        if self.schedule is not None:
            return cron.next_after(_cron(self.schedule), after, _zone(self.timezone))
        return after + (self.period or 0.0)


@functools.lru_cache(maxsize=256)
def _cron(expr: str) -> cron.Cron:
    return cron.parse(expr)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _latest(*times: float | None) -> float | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


def evaluate(spec: Spec | None, row: Any, now: float) -> str:
    """The state a row (a stored row or a dict) should be in at `now` (pure; paused stays)."""
    if row["state"] == "paused":
        return "paused"
    if spec is None:
        return "new"
    success, failure = row["last_success_at"], row["last_failure_at"]
    started, expect_from = row["last_started_at"], row["expect_from"]
    anchor = _latest(success, expect_from)
    if failure is not None and (anchor is None or failure >= anchor):
        return "down"  # the latest report is a failure
    if anchor is None:
        state = "new"
    else:
        due = spec.next_expected(anchor)
        if now >= due + spec.grace:
            return "down"
        if now >= due:
            state = "late"
        else:
            state = "up" if success is not None and success >= (expect_from or -math.inf) else "new"
    latest = _latest(success, failure, expect_from)
    if started is not None and (latest is None or started > latest) and now >= started + spec.grace:
        return "down"  # started, and no success within grace
    return state


def row_json(row: Any) -> dict[str, Any]:
    """A row for events, alerts, the CLI and the API (ISO 8601 times, the monitor decoded)."""
    monitor = models.loads(row["monitor"]) if row["monitor"] else None
    out = {
        "name": row["name"],
        "state": row["state"],
        "last_run_at": models.iso(row["last_run_at"]),
        "last_status": row["last_status"],
        "last_started_at": models.iso(row["last_started_at"]),
        "last_success_at": models.iso(row["last_success_at"]),
        "last_failure_at": models.iso(row["last_failure_at"]),
        "last_error": row["last_error"],
        "state_changed_at": models.iso(row["state_changed_at"]),
        "last_duration": row["last_duration"],
        "monitor": monitor,
    }
    if "previous_state" in row.keys():
        out["previous_state"] = row["previous_state"]
    return out


def _within(spec: Spec, row: Any, now: float) -> bool:
    """Whether `now` falls within the interval after this monitor's latest alert."""
    alerted = row["alerted_at"]
    return spec.alert_interval > 0 and alerted is not None and now < alerted + spec.alert_interval


def damped(spec: Spec, row: Any, now: float, new_state: str) -> bool:
    """Whether a change to `new_state` at `now` is damped: it falls within the interval after
    the latest alert and is a new `down` or follows changes already damped. A recovery right
    after a down alert is told at once; flapping after it is summed up later."""
    return _within(spec, row, now) and (new_state == "down" or row["flaps"] > 0)


def summary_due(spec: Spec, row: Any, now: float) -> bool:
    """Changes were damped and the interval has passed: `summarize` has an alert to write."""
    return row["flaps"] > 0 and row["state"] != "paused" and not _within(spec, row, now)


def flip(tx: db.Tx, row: Any, now: float) -> list[models.Event]:
    """Re-evaluate `row` (as read in this transaction); move it if its state changed.

    A change to or from `down` (not through `paused`) also writes its `monitor_flips` row and,
    unless damped, its event (returned for `runs.insert_events`).
    """
    spec = Spec.from_json(row["monitor"]) if row["monitor"] else None
    old, new = row["state"], evaluate(spec, row, now)
    if new == old:
        return []
    moved = tx.execute("status_flip", {"name": row["name"], "old_state": old, "new_state": new,
                                       "now": now}).rowcount
    if not moved or spec is None or "paused" in (old, new) or "down" not in (old, new):
        return []
    after = {**dict(row), "state": new, "state_changed_at": now}
    if damped(spec, row, now, new):
        tx.execute("status_damped", {"name": row["name"]})
        _flip_row(tx, row_json({**after, "previous_state": old}), old, now, None)
        return []
    return alert(tx, after, old, now)


def summarize(tx: db.Tx, row: Any, now: float) -> list[models.Event]:
    """The alert summing up the changes damped since the latest, once the interval has passed."""
    if row["monitor"] is None or not summary_due(Spec.from_json(row["monitor"]), row, now):
        return []
    return alert(tx, row, row["alerted_state"] or row["state"], now)


def alert(tx: db.Tx, row: Mapping[str, Any], previous: str, now: float) -> list[models.Event]:
    """Alert on `row` as it is now: its event and its pending flip row; the interval restarts.

    The event's data is the row with `previous_state` (the state before the change, or the one
    the latest alert reported), `flaps` (changes damped since that alert) and `flapping_since`
    (that alert's time, when flaps > 0).
    """
    flaps = row["flaps"]
    data = {**row_json({**dict(row), "previous_state": previous}), "flaps": flaps,
            "flapping_since": models.iso(row["alerted_at"]) if flaps else None}
    state = row["state"]
    event = models.Event(id=models.new_id(), topic=DOWN_TOPIC if state == "down" else UP_TOPIC,
                         data=data, source="runnerd", created_at=now)
    tx.execute("status_alerted", {"name": row["name"], "state": state, "now": now})
    _flip_row(tx, data, previous, now, event.id)
    return [event]


def _flip_row(tx: db.Tx, data: dict[str, Any], old: str, now: float,
              event_id: str | None) -> None:
    """Write a `monitor_flips` row (pending with an event, damped without); trim the history."""
    name = data["name"]
    tx.execute("flip_insert", {"name": name, "old_state": old, "new_state": data["state"],
                               "now": now, "event_id": event_id, "status": models.dumps(data),
                               "mail_state": "damped" if event_id is None else "pending"})
    tx.execute("flips_trim", {"name": name, "keep": FLIPS_KEPT})


def record(tx: db.Tx, name: str, status: str, now: float,
           error: str | None = None) -> list[models.Event]:
    """A report (`started`, `succeeded` or `failed`) for a task or a ping monitor."""
    return _evaluate(tx, name, _report(tx, name, status, now, error), now)


def _report(tx: db.Tx, name: str, status: str, now: float,
            error: str | None) -> Callable[[], list[db.Row]]:
    """Send a report (`record`); its answer (whether the row is a monitor's) when called."""
    if error is not None and len(error.encode()) > MAX_ERROR_BYTES:
        error = error.encode()[:MAX_ERROR_BYTES].decode(errors="ignore")
    return tx.later("status_report", {"name": name, "status": status, "now": now,
                                      "error": error})


def _evaluate(tx: db.Tx, name: str, reported: Callable[[], list[db.Row]],
              now: float) -> list[models.Event]:
    """After a report: a monitor's row is read back and evaluated (`flip`)."""
    answer = reported()
    if not answer or not answer[0]["evaluated"]:
        return []  # not a monitor (the common case): nothing to evaluate, nothing more to read
    row = tx.one("status_get", {"name": name})
    return [] if row is None else flip(tx, row, now)


def _work_outcome(rows: list[db.Row]) -> tuple[str, str | None] | None:
    """How a task's work for an event went, from its `task_work` row: its task run and that
    run's action runs.

    ("failed", error) if the task run failed or any action run ended `failed`; ("succeeded",
    None) once all of them succeeded; None while an action is still due, started or retrying.
    """
    work = rows[0] if rows else None
    if work is None or work["task_state"] not in ("succeeded", "failed"):
        return None
    if work["task_state"] == "failed":
        return "failed", work["task_error"]
    if work["action_error"] is not None:
        return "failed", work["action_error"]
    return None if work["pending"] else ("succeeded", None)


#: A run's report to come (`record_work`): the run, its outcome or the read that gives it, and
#: whether it is an action run's (then a failure was recorded already, by what failed).
_Pending = tuple[models.Run, "tuple[str, str | None] | Callable[[], list[db.Row]]", bool]


def _works(tx: db.Tx, finished: Iterable[models.Run]) -> list[_Pending]:
    """The reports these final runs make, in order, their `task_work` reads sent; a task run's
    work completed by several of its action runs is reported once, as the last of them."""
    pending: dict[int, _Pending] = {}
    for run in finished:
        if run.task_name is None or run.finished_at is None:
            continue
        if run.kind is models.RunKind.TASK:
            pending[run.id] = run, tx.later("task_work", {"id": run.id}), False
        elif run.kind is models.RunKind.ACTION and run.task_run_id is not None:
            if run.state is models.RunState.FAILED:
                error = f"action {run.action_type} (run {run.id}) failed: {run.error}"
                pending[-run.id] = run, ("failed", error), False
                continue
            work = pending.pop(run.task_run_id, None)
            read = work[1] if work is not None else tx.later("task_work",
                                                             {"id": run.task_run_id})
            pending[run.task_run_id] = run, read, True
    return list(pending.values())


def record_work(tx: db.Tx, finished: Iterable[models.Run]) -> list[models.Event]:
    """Record tasks' statuses as these runs (final, in the order they finished) make them
    (SPEC §8).

    A task run that failed is a failure at once; one that succeeded is recorded when its action
    runs are done (already, when they were performed in place). A failed action run is its
    task's failure; a succeeded one records the success when it completes the work. The reads
    go in two batches, the works then the reports: a worker turn waits twice for the server,
    not twice per run.
    """
    reports = []
    for run, how, of_action in _works(tx, finished):
        outcome = _work_outcome(how()) if callable(how) else how
        if outcome is None or (of_action and outcome[0] == "failed"):
            continue  # not done yet, or recorded when that action (or the task run) failed
        name, at = cast("str", run.task_name), cast("float", run.finished_at)
        reports.append((name, at, _report(tx, name, outcome[0], at, outcome[1])))
    return [event for name, at, reported in reports for event in _evaluate(tx, name, reported, at)]


def tick(tx: db.Tx, names: Iterable[str], now: float) -> list[models.Event]:
    """Re-evaluate these monitors at `now` and send the summaries due (the ticker's write).

    Each row is read held (`status_hold`: locked on PostgreSQL), so nodes ticking at once
    write each change, and each summary, once."""
    events = []
    for name in names:
        row = tx.one("status_hold", {"name": name})
        if row is not None:
            events += flip(tx, row, now)
            events += summarize(tx, tx.one("status_hold", {"name": name}), now)
    return events


def sync(tx: db.Tx, specs: Mapping[str, Spec], now: float) -> list[models.Event]:
    """Make the rows' monitors those of the configuration; evaluate them at `now`."""
    tx.execute("status_unmonitor", {"names": models.dumps(sorted(specs)), "now": now})
    for name, spec in specs.items():
        tx.execute("status_set_monitor", {"name": name, "monitor": spec.to_json(), "now": now})
    return tick(tx, specs, now)


def pause(tx: db.Tx, name: str, now: float) -> dict[str, Any]:
    """Pause a monitor (no evaluation, no alert) until `resume`."""
    row = _monitor(tx, name)
    if row["state"] == "paused":
        raise errors.InvalidInput(f"monitor {name!r} is already paused")
    tx.execute("status_pause", {"name": name, "now": now})
    return row_json(_monitor(tx, name))


def resume(tx: db.Tx, name: str, now: float) -> dict[str, Any]:
    """Resume a paused monitor: `new`, expecting a success within a period (+ grace) from now."""
    row = _monitor(tx, name)
    if row["state"] != "paused":
        raise errors.InvalidInput(f"monitor {name!r} is not paused (it is {row['state']})")
    tx.execute("status_resume", {"name": name, "now": now})
    return row_json(_monitor(tx, name))


def _monitor(tx: db.Tx, name: str) -> Any:
    row = tx.one("status_get", {"name": name})
    if row is None or row["monitor"] is None:
        raise errors.NotFound(f"no monitor named {name!r}")
    return row


def first_seen(tx: db.Tx, names: Iterable[str], now: float) -> dict[str, float]:
    """When each of these tasks was first seen (`task.created_at`): now for a name this database
    never had a row for (the row is created), else its row's creation. A renamed task is a new
    task."""
    wanted = set(names)
    tx.executemany("status_seen", [{"name": name, "now": now} for name in sorted(wanted)])
    return {r["name"]: r["created_at"] for r in tx.all("status_all") if r["name"] in wanted}


def rows(tx: db.Tx) -> list[dict[str, Any]]:
    """Every row, by name."""
    return [row_json(r) for r in tx.all("status_all")]
