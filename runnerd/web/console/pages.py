"""The console's pages (GET): each reads one snapshot with a few bounded, indexed queries."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib import parse

from aiohttp import web

from runnerd import errors, models
from runnerd.config import cron
from runnerd.monitoring import heartbeat, pings
from runnerd.queue import operator, runs, taskstatus
from runnerd.store import db
from runnerd.tasks import options as task_options
from runnerd.web.console import render

PAGE = 50
RUNS_PER_TASK = 5
TREE_RUNS = 200
PING_HISTORY = 50
MASK = "••••••"


async def home(request: web.Request) -> web.StreamResponse:
    """/console/: the tasks."""
    raise web.HTTPSeeOther("/console/tasks")


def _run_row(run: models.Run, now: float) -> dict[str, Any]:
    return {"id": run.id, "kind": str(run.kind), "state": str(run.state),
            "task": run.task_name or "", "action": run.action_type or "",
            "error": (run.error or "")[:200], "attempts": run.attempts,
            "created": render.when(run.created_at, now),
            "finished": render.when(run.finished_at, now)}


def _masked(options: Any) -> str:
    """A task's options for people: values of `…__secret` options replaced."""
    shown = {k: MASK if task_options.parse_key(k).type == "secret" else v
             for k, v in dict(options).items()}
    return render.pretty(shown)[0] if shown else ""


async def tasks(request: web.Request) -> web.StreamResponse:
    """/console/tasks: subscriptions, enabled, options (secrets masked), status, last runs."""
    view = request.app[render.VIEW]
    reg, now = view.config.registry, view.clock()
    names = sorted(reg.tasks)

    def read(tx: db.Tx) -> tuple[list[Any], dict[str, Any]]:
        latest = tx.all("console_task_runs", {"names": json.dumps(names),
                                              "per_task": RUNS_PER_TASK})
        return latest, {r["name"]: r for r in tx.all("status_all")}

    latest, status = await view.db.read(read)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in latest:
        by_task.setdefault(row["task_name"], []).append(_run_row(models.Run.from_row(row), now))
    shown = []
    for name in names:
        compiled = reg.tasks[name]
        row = status.get(name)
        shown.append({
            "name": name, "href": parse.quote(name, safe=""), "enabled": compiled.task.enabled,
            "subscriptions": [s.topic for s in compiled.subscriptions],
            "options": _masked(compiled.task.options),
            "status": (row["last_status"] if row else None) or "never run",
            "state": row["state"] if row and row["monitor"] else "",
            "error": (row["last_error"] or "")[:200] if row else "",
            "last": render.when(row["last_run_at"] if row else None, now),
            "runs": by_task.get(name, []),
            "text": "mechanic/user/text" in compiled.topics,
            "trigger": "mechanic/user/trigger" in compiled.topics})
    return render.page(request, "tasks.html", {"tasks": shown})


def _time(value: str, name: str) -> float | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise errors.InvalidInput(f"bad {name} {value[:40]!r}: expected a date or "
                                  "date-time like 2026-01-31T12:00") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def _window(q: Mapping[str, str], key: Callable[[str], Any]) -> dict[str, Any]:
    """The time filters and the keyset cursor of a list page, as its query's parameters.

    `before` is `CREATED_AT:ID` of the last row of the previous page (`key` parses the id);
    `until` (exclusive) is the same bound with no id, so the nearer of the two applies.
    """
    since, until = _time(q.get("since", ""), "since"), _time(q.get("until", ""), "until")
    before_at, before_id = float("inf"), None
    if q.get("before"):
        at, _, row_id = q["before"].partition(":")
        try:
            before_at, before_id = float(at), key(row_id)
        except (ValueError, errors.NotFound):
            raise errors.InvalidInput(f"bad cursor {q['before'][:40]!r}: follow the Older "
                                      "link") from None
    if until is not None and until <= before_at:
        before_at, before_id = until, None
    return {"since": -math.inf if since is None else since, "before_at": before_at,
            "before_id": before_id, "limit": PAGE + 1}


def _older(q: Mapping[str, str], rows: list[Any], id_column: str) -> str:
    """The query string of the next (older) page, or "" on the last one."""
    if len(rows) <= PAGE:
        return ""
    last = rows[PAGE - 1]
    older = {k: v for k, v in q.items() if v and k != "before"}
    older["before"] = f"{last['created_at']!r}:{last[id_column]}"
    return "?" + parse.urlencode(older)


def runs_query(q: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The named query and parameters of a runs page (?state=&kind=&task=&since=&until=&before=).

    Every combination of filters is a range scan per (kind, state) pair of an index that ends
    with the creation time (runs_kind_state, or runs_task_kind_state for a task), each bounded
    by the page size.
    """
    state, kind, task = q.get("state") or None, q.get("kind") or None, q.get("task") or None
    operator.check_filters(state, kind, task, PAGE)
    kinds = [kind] if kind else ["task", "action"] if task else [k.value for k in models.RunKind]
    params = {**_window(q, operator.parse_run_id), "kinds": json.dumps(kinds), "task": task,
              "states": json.dumps([state] if state else [s.value for s in models.RunState])}
    return ("console_runs_of_task" if task else "console_runs"), params


async def run_list(request: web.Request) -> web.StreamResponse:
    """/console/runs: a keyset page of runs, newest first (`runs_query`)."""
    view = request.app[render.VIEW]
    q = request.query
    query, params = runs_query(q)
    rows = await view.db.read(lambda tx: tx.all(query, params))
    now = view.clock()
    return render.page(request, "runs.html", {
        "runs": [_run_row(models.Run.from_row(r), now) for r in rows[:PAGE]],
        "filters": dict(q), "states": [s.value for s in models.RunState],
        "kinds": [k.value for k in models.RunKind], "next": _older(q, rows, "id")})


def _tree(tx: db.Tx, run: models.Run) -> tuple[list[models.Run], list[Any]]:
    tree = [models.Run.from_row(r) for r in tx.all("console_run_tree", {
        "event_id": run.event_id, "limit": TREE_RUNS})]
    return tree, tx.all("console_child_events", {"id": run.event_id, "limit": TREE_RUNS})


def _family(run: models.Run, tree: list[models.Run]) -> tuple[models.Run | None, list[Any]]:
    """The run's parent and children in its event's run tree."""
    if run.kind is models.RunKind.ACTION:
        parent = next((r for r in tree if r.id == run.task_run_id), None)
        return parent, []
    if run.kind is models.RunKind.TASK:
        parent = next((r for r in tree if r.kind is models.RunKind.EVENT), None)
        return parent, [r for r in tree if r.task_run_id == run.id]
    return None, [r for r in tree if r.kind is models.RunKind.TASK]


async def run(request: web.Request) -> web.StreamResponse:
    """/console/runs/{id}: the run, its event, actions, logs, error, attempts, family."""
    view = request.app[render.VIEW]
    run_id = operator.parse_run_id(request.match_info["id"])
    redact = view.executors.redact

    def read(tx: db.Tx) -> tuple[dict[str, Any], models.Run, list[models.Run], list[Any]]:
        found = runs.get(tx, run_id)
        return (operator.run_json(tx, found, redact, detail=True), found, *_tree(tx, found))

    detail, found, tree, child_events = await view.db.read(read)
    now = view.clock()
    parent, children = _family(found, tree)
    result, result_cut = render.pretty(detail["result"])
    event = detail["event"] or {}
    data, data_cut = render.pretty(event.get("data"))
    options, options_cut = render.pretty(detail.get("options") if found.action_type else None)
    return render.page(request, "run.html", {
        "run": _run_row(found, now), "error": found.error or "",
        "started": render.when(found.started_at, now), "run_at": render.when(found.run_at, now),
        "live": found.state in ("unscheduled", "scheduled", "due", "started"),
        "failed": found.state == "failed" and found.kind is not models.RunKind.EVENT,
        "waiting": found.state in ("unscheduled", "scheduled", "due"),
        "event": {"id": event.get("id", ""), "topic": event.get("topic", ""),
                  "source": event.get("source", ""), "data": data},
        "result": result, "options": options, "meta": render.pretty(found.meta)[0],
        "cut": result_cut or data_cut or options_cut,
        "attempts": detail["failed_attempts"],
        "parent": _run_row(parent, now) if parent else None,
        "children": [dict(_run_row(c, now), options=render.pretty(
            redact(c.action_type, c.options))[0]) for c in children],
        "child_events": [{"id": e["id"], "topic": e["topic"]} for e in child_events]})


def events_query(q: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The named query and parameters of an events page (?topic=&since=&until=&before=, or
    ?id=): a range scan of events_topic or events_created bounded by the page size."""
    topic = q.get("topic") or None
    if topic is not None:
        operator.check_topic(topic)
    if q.get("id"):
        return "console_event", {"id": q["id"]}
    window = _window(q, str)
    params = {"topic": topic, "since": window["since"], "before_at": window["before_at"],
              "before_rid": window["before_id"], "limit": window["limit"]}
    return ("console_events_of_topic" if topic else "console_events"), params


async def events(request: web.Request) -> web.StreamResponse:
    """/console/events: events newest first (`events_query`), each with its run tree."""
    view = request.app[render.VIEW]
    q = request.query
    query, params = events_query(q)

    def read(tx: db.Tx) -> tuple[list[Any], list[Any]]:
        found = tx.all(query, params)
        return found, tx.all("console_runs_of_events", {
            "ids": json.dumps([e["id"] for e in found[:PAGE]]), "limit": PAGE * 20})

    found, tree = await view.db.read(read)
    now = view.clock()
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in tree:
        by_event.setdefault(r["event_id"], []).append(_run_row(models.Run.from_row(r), now))
    shown = [{"id": e["id"], "topic": e["topic"], "source": e["source"],
              "created": render.when(e["created_at"], now),
              "data": render.pretty(models.loads(e["data"]))[0][:300],
              "runs": by_event.get(e["id"], [])} for e in found[:PAGE]]
    return render.page(request, "events.html", {
        "events": shown, "filters": dict(q), "next": _older(q, found, "rid")})


def _schedule(monitor: Any) -> str:
    if monitor.schedule:
        return cron.describe(cron.parse(monitor.schedule))
    return f"every {render.ago(0, monitor.period or 0).removesuffix(' ago')}"


async def monitor_list(request: web.Request) -> web.StreamResponse:
    """/console/monitors: each monitor's state and schedule in words."""
    view = request.app[render.VIEW]
    settings, now = view.config.settings, view.clock()
    status = {r["name"]: r for r in await view.db.read(lambda tx: tx.all("status_all"))}
    shown = [{"name": m.name, "href": parse.quote(m.name, safe=""), "task": m.task or "", "schedule": _schedule(m),
              "state": status[m.name]["state"] if m.name in status else "new",
              "last": render.when(status[m.name]["last_run_at"] if m.name in status else None,
                                  now)} for m in settings.monitors]
    return render.page(request, "monitors.html", {"monitors": shown})


async def monitor(request: web.Request) -> web.StreamResponse:
    """/console/monitors/{name}: state, schedule, ping history, flips and their alerts."""
    view = request.app[render.VIEW]
    name = request.match_info["name"]
    found = next((m for m in view.config.settings.monitors if m.name == name), None)
    if found is None:
        raise errors.NotFound(f"no monitor named {name!r}")

    def read(tx: db.Tx) -> tuple[dict[str, Any], Any]:
        return pings.history(tx, name, PING_HISTORY), tx.one("status_get", {"name": name})

    history, row = await view.db.read(read)
    state = taskstatus.row_json(row) if row else {"state": "new"}
    return render.page(request, "monitor.html", {
        "name": name, "href": parse.quote(name, safe=""), "task": found.task or "", "schedule": _schedule(found),
        "grace": render.ago(0, found.grace).removesuffix(" ago"), "state": state["state"],
        "paused": state["state"] == "paused", "pings": history["pings"],
        "flips": history["flips"]})


async def queue(request: web.Request) -> web.StreamResponse:
    """/console/queue: counts by kind and state, lag, what waits most, and every worker process
    on the database with its node and heartbeat (stale: older than `node_timeout`)."""
    view = request.app[render.VIEW]
    now = view.clock()
    timeout = view.config.settings.node_timeout

    def read(tx: db.Tx) -> tuple[dict[str, Any], list[Any]]:
        return runs.stats(tx, now), tx.all("workers_all")

    stats, workers = await view.db.read(read)
    return render.page(request, "queue.html", {
        "stats": stats, "counts": [{"kind": k, "states": sorted(v.items())}
                                   for k, v in stats["queue"].items()],
        "timeout": render.ago(0, timeout).removesuffix(" ago"),
        "workers": [{"id": w["id"], "node": w["node"] or w["host"], "healthy": bool(w["healthy"]),
                     "problem": w["problem"] or "", "active": w["active_runs"],
                     "beat": render.when(w["heartbeat_at"], now),
                     "stale": w["stopped_at"] is None and not heartbeat.alive(w, now, timeout),
                     "stopped": render.when(w["stopped_at"], now) if w["stopped_at"] else None,
                     "started": render.when(w["started_at"], now)} for w in workers]})
