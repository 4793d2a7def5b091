"""The run queue: the only writer of `runs.state` (every state change is one of its functions).

Every function takes a `db.Tx` and runs inside one transaction on the database thread, so the
worker can finish a batch of runs and claim the next batch in a single commit. The queue knows
nothing of tasks: performing an event run is a `Route` the engine passes in.

    scheduled --(run_at comes)--> due --(claim)--> started --> succeeded
                                   ^                  |  \\--> failed --(manual retry)--> due
                                   |                  \\--> scheduled (automatic retry, backoff)
                                   \\--(crash or stop: requeue, the attempt counts)
    started --(found after a crash with attempts = MAX_ATTEMPTS: fail_interrupted)--> failed

Task runs are never claimed by the worker: it renders them while they are `due` and `finish`
takes them straight from `due` to their final state (see `due_task_runs`). Nor are event runs:
the engine routes them with its `Route` where they are stored (`insert_events`, the ingest) or,
once due, in the worker's transaction (`route_due`).

Several nodes may share one PostgreSQL database (SPEC §14): each function that takes work takes
the node's name (`node`) and the statements hold what they take. A claim and the routing of due
event runs lock their rows (`FOR UPDATE SKIP LOCKED`), a task run being rendered carries a lease
(`runs.node`, `runs.lease_until`: `TASK_LEASE_SECONDS`), and every finish is conditional on the
run being as it was read (its state and attempts; on PostgreSQL also held by this node), so a
late finish changes nothing, not even its cache or event action's write. On SQLite one process
works: the same statements, with no lease to take.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from runnerd import errors, models
from runnerd.models import RunKind, RunState
from runnerd.queue import taskstatus
from runnerd.store import db

logger = logging.getLogger(__name__)

#: 4 automatic retries after the first attempt, at about 30 s, 76 s, 152 s and 308 s.
BACKOFF = (30.0, 76.0, 152.0, 308.0)
MAX_ATTEMPTS = len(BACKOFF) + 1
JITTER = 0.1  # +/- 10 %
#: How long a task run fetched (or stored by the ingest) for rendering is this node's. A healthy
#: fetch, render (at most the worker's 0.05 s render batch) and finish take milliseconds, so ten
#: seconds leave two orders of magnitude for a slow render or a slow database before another
#: node renders the run again (wasted work only: the late finish is a no-op); and a dead
#: node's task runs are rendered elsewhere well before its started runs are requeued (the
#: default node_timeout is 30 s).
TASK_LEASE_SECONDS = 10.0


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
    base = BACKOFF[min(attempt, len(BACKOFF)) - 1]
    return base * (1 + JITTER * (2 * rand() - 1))


def new_event(
    topic: str,
    data: Any,
    source: str,
    now: float,
    *,
    parent_id: str | None = None,
    webhook_request_id: str | None = None,
    task_ids: Sequence[str] | None = None,
    run_at: float | None = None,
    data_json: str | None = None,
) -> models.Event:
    """A new event (not stored yet); `data_json`: `data` as received JSON text, if it was."""
    return models.Event(
        id=models.new_id(), topic=topic, data=data, source=source, created_at=now,
        parent_id=parent_id, webhook_request_id=webhook_request_id,
        task_ids=tuple(task_ids) if task_ids is not None else None, run_at=run_at,
        data_json=data_json,
    )


def run_row(
    kind: RunKind,
    event_id: str,
    now: float,
    *,
    run_at: float | None = None,
    task_name: str | None = None,
    action_type: str | None = None,
    options: Any = None,
    meta: Any = None,
    perform_event: bool = True,
    task_run_id: int | None = None,
) -> dict[str, Any]:
    """Parameters of `insert_run`: due now, or scheduled when `run_at` is in the future; held
    by no node."""
    at = now if run_at is None or run_at < now else run_at
    return {
        "kind": str(kind),
        "state": str(RunState.SCHEDULED if at > now else RunState.DUE),
        "priority": models.PRIORITY[kind],
        "run_at": at,
        "event_id": event_id,
        "task_name": task_name,
        "action_type": action_type,
        "options": None if kind is not RunKind.ACTION else models.dumps(options),
        "meta": None if meta is None else models.dumps(meta),
        "perform_event": int(perform_event),
        "task_run_id": task_run_id,
        "created_at": now,
        "result": None,
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "node": None,
        "lease_until": None,
    }


#: Performs an event run in the transaction `tx` that finishes it: the names of the tasks that
#: receive the event, and their task runs (`run_row`s); or raises `NotRouted`. The engine's
#: (`run_kinds.Handlers.route`), passed in by the caller.
Route = Callable[[db.Tx, models.Event, float], tuple[list[str], list[dict[str, Any]]]]


class NotRouted(Exception):  # noqa: N818 - an outcome, not a failure of the code
    """Raised by a `Route`: the event goes to no task. With `error` its event run fails (an
    event filter failed), else it succeeds with `result` (a filter skipped the event).
    `events` are stored with it (mechanic/errors/event), their event runs due."""

    def __init__(self, *, result: dict[str, Any] | None = None, error: str | None = None,
                 events: Sequence[models.Event] = ()) -> None:
        super().__init__(error or "not routed")
        self.state = _SUCCEEDED if error is None else str(RunState.FAILED)
        self.result = None if result is None else models.dumps(result)
        self.error = error
        self.events = list(events)


def _perform_route(tx: db.Tx, route: Route, event: models.Event, now: float,
                   follow: list[models.Event]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """An event run performed with `route`: its task runs and how it ended (state, result,
    error); the events a `NotRouted` brings are added to `follow`."""
    try:
        names, children = route(tx, event, now)
    except NotRouted as halt:
        follow.extend(halt.events)
        return [], {"state": halt.state, "result": halt.result, "error": halt.error}
    return children, {"state": _SUCCEEDED, "result": _routed_result(names), "error": None}


def performed_event_run(event: models.Event, ended: dict[str, Any], now: float,
                        node: str | None) -> dict[str, Any]:
    """An event run already performed (`_perform_route`, by `node`): its task runs are stored
    beside it."""
    row = run_row(RunKind.EVENT, event.id, now)
    row.update(ended, attempts=1, started_at=now, finished_at=now, node=node)
    return row


def _routed_result(names: list[str]) -> str:
    """An event run's result (JSON): the names of the tasks it made task runs for."""
    return models.dumps({"tasks": names}) if names else _NO_TASKS


#: The run priorities as the parameters of the queries that select by priority (queries.sql
#: names them :action_priority, :task_priority and :event_priority instead of writing 3, 2, 1).
PRIORITIES = {f"{kind}_priority": priority for kind, priority in models.PRIORITY.items()}
_SUCCEEDED = str(RunState.SUCCEEDED)
_DUE = str(RunState.DUE)
_STARTED = str(RunState.STARTED)
_NO_TASKS = models.dumps({"tasks": []})  #: most webhook events of a busy daemon: computed once


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """What `insert_events` routed: the jobs of the due task runs of events without a parent
    (the caller may hand them to the worker once committed: `Worker.offer`), and how many
    event runs it performed."""

    jobs: list[Job]
    routed: int


NOTHING_ROUTED = Stored([], 0)


def insert_events(tx: db.Tx, events: Iterable[models.Event], now: float,
                  route: Route | None = None, *, node: str | None = None,
                  hand_over: bool = True) -> Stored:
    """Store events, each with its event run (due now or at the event's `run_at`).

    With `route` (the engine's ingest), an event due now is routed in this same transaction:
    its event run is stored `succeeded` with its task runs, saving the worker a turn per
    event. Routing is pure CPU (the registry's subscription index), so the result is the same
    as when the worker routes the event run a moment later (`route_due`). With `hand_over`,
    the due task runs of events without a parent are handed back as `Stored.jobs`, stored
    leased to `node` (the ingest's), so no other node renders them while this node's worker
    does; without it (the worker is behind and would refuse them: `Worker.takes_offers`) they
    are stored due like the rest, for a fetch to take in the queue's order.
    """
    events = list(events)
    if not events:
        return NOTHING_ROUTED
    tx.executemany("insert_event", [
        {"id": e.id, "topic": e.topic,
         "data": e.data_json if e.data_json is not None else models.dumps(e.data),
         "source": e.source,
         "parent_id": e.parent_id, "webhook_request_id": e.webhook_request_id,
         "task_ids": None if e.task_ids is None else models.dumps(list(e.task_ids)),
         "created_at": e.created_at}
        for e in events
    ])
    if route is None:
        tx.executemany("insert_run", [run_row(RunKind.EVENT, e.id, now, run_at=e.run_at)
                                      for e in events])
        return NOTHING_ROUTED
    rows, ready, routed = [], [], 0
    follow: list[models.Event] = []
    for e in events:
        if e.run_at is not None and e.run_at > now:
            rows.append(run_row(RunKind.EVENT, e.id, now, run_at=e.run_at))
            continue
        task_runs, ended = _perform_route(tx, route, e, now, follow)
        rows.append(performed_event_run(e, ended, now, node))
        for row in task_runs:
            if hand_over and row["state"] == _DUE and e.parent_id is None:  # no ancestors
                ready.append((row, e))
            else:
                rows.append(row)
        routed += 1
    tx.executemany("insert_run", rows)
    insert_events(tx, follow, now)  # routed by the worker's next turn
    if not ready:
        return Stored([], routed)
    lease_until = now + TASK_LEASE_SECONDS  # handed over leased to this node
    leased = [{**row, "node": node, "lease_until": lease_until, "error": None} for row, _ in ready]
    ids = tx.inserted_ids("insert_run", leased)  # a job needs its run's id
    jobs = []
    for row, (_, e), run_id in zip(leased, ready, ids, strict=True):
        row["id"] = run_id
        jobs.append(Job(models.Run.from_row(row), e))
    return Stored(jobs, routed)


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A claimed run with what performing it needs."""

    run: models.Run
    event: models.Event
    parent: dict[str, Any] | None = None  #: `event.parent` for Liquid (task runs only)


#: `event.parent` goes this many generations up (Mechanic's chains are short).
PARENT_GENERATIONS = 5


def promote(tx: db.Tx, now: float) -> None:
    """`scheduled` runs whose time came become `due`."""
    tx.execute("promote_scheduled", {"now": now})


def claim(tx: db.Tx, limit: int, now: float, *, event_runs: bool = False,
          node: str | None = None) -> list[Job]:
    """Promote scheduled runs whose time came, then start up to `limit` due action runs, by
    priority, as `node`'s (on PostgreSQL, rows another node is claiming are skipped: no run is
    started twice). Task runs are never claimed (see `due_task_runs`), nor event runs: the
    worker routes those (`route_due`); `event_runs=True` claims them too, for the queue's own
    tests of the claim order (nothing performs a claimed event run)."""
    promote(tx, now)
    if limit <= 0:
        return []
    return _jobs(tx, tx.all("claim_runs", {"now": now, "limit": limit, "node": node,
                                           "event_limit": limit if event_runs else 0,
                                           **PRIORITIES}))


def route_due(tx: db.Tx, route: Route, limit: int, now: float, node: str | None = None) -> int:
    """Route up to `limit` due event runs, oldest first, with `route`: each goes from `due`
    straight to `succeeded`, its task runs stored beside it, as `insert_events` does for the
    events it routes. Returns how many were routed.

    These are the events stored without a route (the CLI, the API, the scheduler, the
    monitors, follow-up events) or for later. Routing is CPU work (a lookup in memory), so an
    event run takes no worker slot: slow action runs holding every slot never hold up the task
    runs of waiting events. On PostgreSQL the rows are locked until the commit and those
    another node is routing are skipped: each event's task runs are created once.
    """
    if limit <= 0:
        return 0
    rows = tx.all("due_event_runs", {"limit": limit, "node": node, **PRIORITIES})
    if not rows:
        return 0
    events = _events(tx, {row["event_id"] for row in rows})
    finished, task_runs = [], []
    follow: list[models.Event] = []
    for row in rows:
        children, ended = _perform_route(tx, route, events[row["event_id"]], now, follow)
        finished.append({"id": row["id"], "from": _DUE, **ended, "now": now, "started_at": now,
                         "held": row["attempts"], "attempts": row["attempts"] + 1,
                         "node": node})
        task_runs.extend(children)
    tx.executemany("finish_run", finished)
    tx.executemany("insert_run", task_runs)
    insert_events(tx, follow, now)  # routed by the worker's next turn
    return len(rows)


def due_task_runs(tx: db.Tx, limit: int, now: float, node: str | None = None) -> list[Job]:
    """Up to `limit` due task runs, oldest first, left `due`.

    A task run is pure CPU (a render), so the worker renders these one at a time between its
    transactions instead of giving each a slot: `begin` marks a run's attempt in memory, and
    `finish` records it straight from `due`. A crash during the render leaves it due, to be
    rendered again. On PostgreSQL the runs fetched are leased to `node` for
    `TASK_LEASE_SECONDS` in the same statement, and runs another node holds are left alone
    until its lease expires (it died mid-render): then this node renders them again.
    """
    if limit <= 0:
        return []
    return _jobs(tx, tx.all("due_task_runs", {"limit": limit, "now": now, "node": node,
                                              "lease_until": now + TASK_LEASE_SECONDS,
                                              **PRIORITIES}))


def begin(job: Job, now: float) -> Job:
    """A due task run's attempt, started now (written when the run is finished)."""
    run = job.run.evolve(attempts=job.run.attempts + 1, started_at=now)
    return Job(run, job.event, job.parent)


def _jobs(tx: db.Tx, rows: list[db.Row]) -> list[Job]:
    """Jobs for these `runs` rows in queue order, with their events (and the ancestors of task
    runs' events) fetched batch-wide."""
    # RETURNING has no order: restore the queue's.
    claimed = sorted((models.Run.from_row(r) for r in rows),
                     key=lambda r: (-r.priority, r.run_at, r.id))
    events = _events(tx, {run.event_id for run in claimed})
    # Task runs see `event.parent`: fetch the ancestors a generation at a time, batch-wide.
    parents = {events[run.event_id].parent_id for run in claimed if run.kind is RunKind.TASK}
    for _ in range(PARENT_GENERATIONS):
        wanted = {i for i in parents if i is not None and i not in events}
        if not wanted:
            break
        found = _events(tx, wanted)
        events.update(found)
        parents = {e.parent_id for e in found.values()}
    jobs = []
    for run in claimed:
        event = events[run.event_id]
        parent = _parent(event, events) if run.kind is RunKind.TASK else None
        jobs.append(Job(run, event, parent))
    return jobs


def _events(tx: db.Tx, ids: set[str]) -> dict[str, models.Event]:
    rows = tx.all("events_by_ids", {"ids": models.dumps(sorted(ids))}) if ids else []
    return {row["id"]: models.Event.from_row(row) for row in rows}


def _parent(event: models.Event, events: dict[str, models.Event]) -> dict[str, Any] | None:
    """`event.parent` for Liquid: the ancestors (at most PARENT_GENERATIONS), nested."""
    chain: list[models.Event] = []
    at = events.get(event.parent_id) if event.parent_id is not None else None
    while at is not None and len(chain) < PARENT_GENERATIONS:
        chain.append(at)
        at = events.get(at.parent_id) if at.parent_id is not None else None
    parent = None
    for ancestor in reversed(chain):
        parent = ancestor.to_liquid(parent)
    return parent


@dataclasses.dataclass(slots=True)
class Outcome:
    """How performing a run went, and what to write when it is finished."""

    run: models.Run
    ok: bool
    result: Any = None
    error: str | None = None
    retryable: bool = False
    #: computes the result inside the finishing transaction (cache, event, outbox actions)
    deferred: Callable[[db.Tx], Any] | None = None
    #: `deferred` in two steps, when the action has them (`actions.Deferred.send`): children
    #: performed in place send their writes together and read their results together
    send: Callable[[db.Tx], Callable[[], Any]] | None = None
    #: runs to create when the run succeeds (task runs of an event run, action runs of a task run)
    children: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: events to create once the run is final (error events, mechanic/actions/perform)
    follow_up: Callable[[models.Run], list[models.Event]] | None = None
    finished_at: float = 0.0
    #: action types whose children are performed where they are stored (in-process executors)
    inline_types: frozenset[str] = frozenset()
    #: performs such a child, given its stored run (`started`): its outcome is then finished
    #: in this same transaction, so it needs no claim, no slot and no commit of its own
    perform_inline: Callable[[models.Run], Outcome] | None = None


class _Stale(Exception):
    """The run was no longer in the state it was read in: its finish is undone."""


def _was(run: models.Run, node: str | None) -> dict[str, Any]:
    """The parameters saying how the run was read, on which its finish is conditional."""
    # A due task run's attempt is counted in memory (`begin`) until it is written here.
    held = run.attempts - 1 if run.state is RunState.DUE else run.attempts
    return {"id": run.id, "from": str(run.state), "started_at": run.started_at,
            "attempts": run.attempts, "held": held, "node": node}


def _retried(outcome: Outcome) -> bool:
    """Whether the outcome is a failure to try again later (an automatic retry)."""
    return not outcome.ok and outcome.retryable and outcome.run.attempts < MAX_ATTEMPTS


def finish(tx: db.Tx, outcome: Outcome, now: float,
           rand: Callable[[], float] = random.random, *,
           performed: list[Outcome] | None = None, inline: bool = False,
           node: str | None = None) -> models.Run | None:
    """Record an outcome of `node`'s: succeeded, failed, or scheduled for an automatic retry.

    Returns the run as recorded, or None when it was no longer as it was read (`started`, or
    `due` for a task run rendered between the worker's turns, with the same attempts; on
    PostgreSQL also still held by `node`): a lost race, a run requeued and claimed again, a
    lease another node took over. A deferred write (`Outcome.deferred`) is then undone with it,
    so a stale finish never applies a cache or event action twice. Children performed in place
    (`Outcome.perform_inline`) are finished here too (`inline`) and their outcomes appended to
    `performed`; their task's status is then recorded once, by the parent.
    """
    run, ok, result, error = outcome.run, outcome.ok, outcome.result, outcome.error
    finished_at = outcome.finished_at or now
    was = _was(run, node)
    if ok and outcome.deferred is not None:
        try:
            with tx.savepoint():
                result = outcome.deferred(tx)
                if not _moved(tx, was, RunState.SUCCEEDED, result, None, finished_at,
                              check=not inline):
                    raise _Stale
        except errors.RunnerdError as exc:
            ok, error = False, exc.message
        except _Stale:
            _stale(run)
            return None
        else:
            final = _final(outcome, RunState.SUCCEEDED, result, None, now)
            _finished(tx, [(outcome, final)], now, rand, performed, inline, node)
            return final
    elif _retried(outcome):
        retry_at = finished_at + backoff(run.attempts, rand)
        if tx.execute("retry_later", {**was, "run_at": retry_at, "error": error}).rowcount == 0:
            return None
        tx.execute("insert_attempt", {"run_id": run.id, "attempt": run.attempts,
                                      "started_at": run.started_at, "finished_at": finished_at,
                                      "error": error})
        return dataclasses.replace(run, state=RunState.SCHEDULED, run_at=retry_at, error=error)
    state = RunState.SUCCEEDED if ok else RunState.FAILED
    if not _moved(tx, was, state, result, error, finished_at, check=not inline):
        _stale(run)
        return None
    final = _final(outcome, state, result, error, now)
    _finished(tx, [(outcome, final)], now, rand, performed, inline, node)
    return final


def finish_all(tx: db.Tx, outcomes: Sequence[Outcome], now: float,
               rand: Callable[[], float] = random.random, *,
               performed: list[Outcome] | None = None, node: str | None = None) -> None:
    """`finish` each outcome, in phases where a read would wait for the server (PostgreSQL).

    The outcomes whose final state needs no read first (no deferred write, no automatic retry:
    most task runs) are moved together: their conditional updates are all sent, then their
    row counts read (one wait for all), then what follows them (`_finished`) is written for
    those that moved, a batch at a time. The others go one by one through `finish`."""
    together = []
    for outcome in outcomes:
        if outcome.deferred is None and not _retried(outcome):
            together.append(outcome)
        else:
            finish(tx, outcome, now, rand, performed=performed, node=node)
    sent = []
    for outcome in together:
        state = RunState.SUCCEEDED if outcome.ok else RunState.FAILED
        sent.append((outcome, state, _send_finish(tx, _was(outcome.run, node), state,
                                                  outcome.result, outcome.error,
                                                  outcome.finished_at or now)))
    moved = []
    for outcome, state, update in sent:
        if update.rowcount > 0:
            moved.append((outcome, _final(outcome, state, outcome.result, outcome.error, now)))
        else:
            _stale(outcome.run)
    _finished(tx, moved, now, rand, performed, False, node)


def _moved(tx: db.Tx, was: dict[str, Any], state: RunState, result: Any, error: str | None,
           finished_at: float, *, check: bool = True) -> bool:
    """Move the run to its final state unless it left the state it was read in. A run this
    transaction stored (`check` False: a child performed in place) cannot have, so the answer
    is not waited for (a round trip on PostgreSQL)."""
    moved = _send_finish(tx, was, state, result, error, finished_at)
    return not check or moved.rowcount > 0


def _send_finish(tx: db.Tx, was: dict[str, Any], state: RunState, result: Any,
                 error: str | None, finished_at: float) -> db.Result:
    """The conditional update to the final state (`finish_run`), sent; its row count says
    whether the run was still as `was` read it (on PostgreSQL, reading it waits)."""
    return tx.execute("finish_run", {**was, "state": str(state), "error": error,
                                     "result": models.dumps(result), "now": finished_at})


def _stale(run: models.Run) -> None:
    """Say that a finish came too late (its run was no longer in the state read)."""
    logger.warning("run %s was no longer %s when it finished", run.id, run.state,
                   extra={"action": "stale_finish", "run_id": run.id})


def _final(outcome: Outcome, state: RunState, result: Any, error: str | None,
           now: float) -> models.Run:
    """The run as its finish recorded it."""
    return outcome.run.evolve(state=state, result=result, error=error,
                              finished_at=outcome.finished_at or now)


def _finished(tx: db.Tx, moved: Sequence[tuple[Outcome, models.Run]], now: float,
              rand: Callable[[], float], performed: list[Outcome] | None, inline: bool,
              node: str | None) -> None:
    """What follows runs' final states (each outcome with its run as recorded): their
    children, follow-up events and task status (not for children performed `inline`: their
    parent records its task's status once), each kind for all of them at once."""
    parents = [outcome for outcome, final in moved
               if final.state is RunState.SUCCEEDED and outcome.children]
    if parents:
        _store_children(tx, parents, now, rand, [] if performed is None else performed, node)
    events = [event for outcome, final in moved if outcome.follow_up is not None
              for event in outcome.follow_up(final)]
    if not inline:
        # task_status changes when the task's work for the event is done, in this same
        # transaction (SPEC §8); a monitor flipping to or from down adds its event.
        events += taskstatus.record_work(tx, [final for _, final in moved])
    insert_events(tx, events, now)


def _store_children(tx: db.Tx, parents: Sequence[Outcome], now: float,
                    rand: Callable[[], float], performed: list[Outcome],
                    node: str | None) -> None:
    """Insert the parents' children in order (their ids read once for all, when some are
    to be performed); those of an in-process type are then performed (by `node`, which holds
    them) and finished."""
    rows: list[dict[str, Any]] = []
    here: list[tuple[Callable[[models.Run], Outcome], int]] = []  # (perform_inline, row index)
    for outcome in parents:
        for row in outcome.children:
            if (outcome.perform_inline is not None and row["state"] == _DUE
                    and row["action_type"] in outcome.inline_types):
                here.append((outcome.perform_inline, len(rows)))
                row = {**row, "state": _STARTED, "attempts": 1, "started_at": now,
                       "error": None, "node": node}
            rows.append(row)
    if not here:
        tx.executemany("insert_run", rows)
        return
    ids = tx.inserted_ids("insert_run", rows)
    children = [perform(models.Run.from_row({**rows[index], "id": ids[index]}))
                for perform, index in here]
    sent = [_send(tx, child) for child in children]
    for child, read in zip(children, sent, strict=True):
        child = read()
        if finish(tx, child, now, rand, performed=performed, inline=True,
                  node=node) is not None:
            performed.append(child)


def _send(tx: db.Tx, child: Outcome) -> Callable[[], Outcome]:
    """A child performed in place, its deferred write sent when it has two steps (`send`, which
    writes nothing when it refuses: no savepoint needed); the returned function gives the
    outcome to finish, its result read (or its failure)."""
    if not child.ok or child.send is None:
        return lambda: child
    try:
        result = child.send(tx)
    except errors.RunnerdError as exc:
        return lambda: dataclasses.replace(child, ok=False, error=exc.message, deferred=None,
                                           send=None)

    def read() -> Outcome:
        try:
            value = result()
        except errors.RunnerdError as exc:
            return dataclasses.replace(child, ok=False, error=exc.message, deferred=None,
                                       send=None)
        return dataclasses.replace(child, result=value, deferred=None, send=None)

    return read


def finish_and_claim(tx: db.Tx, outcomes: Sequence[Outcome], limit: int, now: float,
                     route: Route, performed: list[Outcome] | None = None, renders: int = 0,
                     routes: int = 0, node: str | None = None
                     ) -> tuple[list[Job], list[Job], int]:
    """The worker's one transaction per turn as `node`: record what finished, claim what is
    next.

    Returns the claimed action runs (at most `limit`), up to `renders` due task runs (those of
    the up to `routes` event runs routed here with `route` included: `route_due`), and how many
    event runs were routed. Outcomes are recorded first, so a task run rendered in the last turn
    is never handed out again, and the events they store are routed in this same transaction.
    `performed` receives the outcomes of the action runs performed in place."""
    finish_all(tx, outcomes, now, performed=performed, node=node)
    jobs = claim(tx, limit, now, node=node)
    routed = route_due(tx, route, routes, now, node)
    return jobs, due_task_runs(tx, renders, now, node), routed


def defer(tx: db.Tx, run_ids: Iterable[int], run_at: float) -> None:
    """These claimed runs back to `scheduled` until `run_at`, unperformed: the claim's attempt
    does not count (the worker's lanes: their target already has its share of the slots)."""
    tx.executemany("defer_run", [{"id": i, "run_at": run_at} for i in run_ids])


#: The error of an interrupted attempt in `run_attempts` when its requeue names none.
INTERRUPTED = "interrupted: the daemon stopped or crashed while performing it"


def requeued(tx: db.Tx, query: str, params: dict[str, Any], now: float) -> int:
    """Run `query`, a statement that puts `started` runs back to `due` (their attempt counts)
    and returns them; each interrupted attempt is recorded in `run_attempts` as a retried
    failure's is, ended `now`, with the error the requeue gave the run (else INTERRUPTED).
    Returns how many were requeued."""
    rows = tx.all(query, params)
    if rows:
        tx.executemany("insert_attempt", [
            {"run_id": row["id"], "attempt": row["attempts"], "started_at": row["started_at"],
             "finished_at": now, "error": row["error"] or INTERRUPTED} for row in rows])
    return len(rows)


#: The engine's failure of a job without performing it, given the error to record: the
#: failure's consequences for its kind of run (`run_kinds.Handlers.interrupted`).
Fail = Callable[[Job, str], Outcome]


def interrupted_error(run: models.Run) -> str:
    """The error of a run failed because its last allowed attempt was interrupted."""
    return (f"interrupted on attempt {run.attempts} of {MAX_ATTEMPTS} (the daemon stopped or "
            f"crashed while performing it); not retried again: runnerd runs retry {run.id} "
            "to try again")


def fail_interrupted(tx: db.Tx, query: str, params: dict[str, Any], fail: Fail,
                     now: float) -> list[Outcome]:
    """Fail the `started` runs that `query` selects with `params` among those whose attempts
    reached MAX_ATTEMPTS: the attempt that was interrupted was their last (a run that kills
    its process would otherwise be requeued and performed forever). Each goes through `finish`
    with the outcome `fail` gives, as held by its node: the same consequences (task status,
    follow-up events) as any failure of its kind. Called before the statement that requeues the
    other started runs. Returns the outcomes recorded."""
    rows = tx.all(query, {**params, "max_attempts": MAX_ATTEMPTS})
    holders = {row["id"]: row["node"] for row in rows}
    failed = []
    for job in _jobs(tx, rows):
        outcome = fail(job, interrupted_error(job.run))
        if finish(tx, outcome, now, node=holders[job.run.id]) is not None:
            failed.append(outcome)
    return failed


def requeue(tx: db.Tx, run_ids: Iterable[int], now: float, node: str | None = None) -> None:
    """These `started` runs back to `due` (interrupted by a stop), those `node` still holds."""
    for run_id in run_ids:
        requeued(tx, "requeue_run", {"id": run_id, "node": node}, now)


def get(tx: db.Tx, run_id: int) -> models.Run:
    """The run, or NotFound."""
    row = tx.one("run_by_id", {"id": run_id})
    if row is None:
        raise errors.NotFound(f"no run with id {run_id}")
    return models.Run.from_row(row)


def attempts(tx: db.Tx, run_id: int) -> list[dict[str, Any]]:
    """The failed attempts recorded for a run."""
    return [{"attempt": r["attempt"], "started_at": models.iso(r["started_at"]),
             "finished_at": models.iso(r["finished_at"]), "error": r["error"]}
            for r in tx.all("attempts_of_run", {"id": run_id})]


def select(tx: db.Tx, *, state: str | None = None, kind: str | None = None,
           task: str | None = None, limit: int = 50) -> list[models.Run]:
    """Runs, newest first, filtered."""
    rows = tx.all("list_runs", {"state": state, "kind": kind, "task": task, "limit": limit})
    return [models.Run.from_row(r) for r in rows]


def retry(tx: db.Tx, run_id: int, now: float) -> models.Run:
    """Put a failed task or action run back to `due` (task runs re-render the current code)."""
    run = get(tx, run_id)
    if tx.execute("retry_failed_run", {"id": run_id, "now": now}).rowcount == 0:
        if run.kind is RunKind.EVENT:
            raise errors.InvalidInput(f"run {run_id} is an event run: only task and action "
                                      "runs can be retried")
        raise errors.InvalidInput(f"run {run_id} is {run.state}: only failed runs can be retried")
    return get(tx, run_id)


def cancel(tx: db.Tx, run_id: int, now: float) -> models.Run:
    """Fail a run that has not started yet, with the error `cancelled` (its task's failure)."""
    run = get(tx, run_id)
    if tx.execute("cancel_run", {"id": run_id, "now": now}).rowcount == 0:
        raise errors.InvalidInput(f"run {run_id} is {run.state}: only queued runs "
                                  "(unscheduled, scheduled, due) can be cancelled")
    cancelled = get(tx, run_id)
    insert_events(tx, taskstatus.record_work(tx, [cancelled]), now)
    return cancelled


def queue_lag(tx: db.Tx, now: float) -> float:
    """Seconds the oldest due run has waited (0 when none is due)."""
    oldest = tx.one("oldest_due")
    return 0.0 if oldest is None or oldest["run_at"] is None else max(0.0, now - oldest["run_at"])


def stats(tx: db.Tx, now: float) -> dict[str, Any]:
    """Queue depth by kind and state, lag, what waits most, and the last day's outcomes."""
    counts: dict[str, dict[str, int]] = {k.value: {} for k in RunKind}
    for row in tx.all("queue_counts"):
        counts[row["kind"]][row["state"]] = row["n"]
    finished: dict[str, dict[str, int]] = {k.value: {} for k in RunKind}
    for row in tx.all("finished_counts_since", {"since": now - 86400}):
        finished[row["kind"]][row["state"]] = row["n"]
    lag = queue_lag(tx, now)

    def top(name: str) -> list[dict[str, Any]]:
        return [{"name": r["name"], "runs": r["n"]} for r in tx.all(name)]

    return {
        "queue": counts,
        "lag_seconds": round(lag, 3),
        "last_24h": finished,
        "top_waiting_tasks": top("top_waiting_tasks"),
        "top_waiting_actions": top("top_waiting_actions"),
        "top_waiting_topics": top("top_waiting_topics"),
    }


def due_task_depth(tx: db.Tx, cap: int) -> int:
    """How many task runs are due (waiting to be rendered), counted up to `cap`."""
    row = tx.one("due_task_depth", {"cap": cap, **PRIORITIES})
    return int(row["n"]) if row is not None else 0
