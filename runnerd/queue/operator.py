"""Operator actions shared by the command line and the admin API."""

from __future__ import annotations

from typing import Any

from runnerd import config, errors, models
from runnerd.queue import runs
from runnerd.store import db
from runnerd.tasks import registry


def check_topic(topic: Any) -> str:
    """Any well-formed topic (the operator may send mechanic/scheduler/10min to test a task)."""
    if not isinstance(topic, str) or not config.TOPIC.match(topic):
        raise errors.InvalidInput(f"bad topic {topic!r}: expected domain/subject/verb "
                                  "(lower-case letters, digits, _ - .)")
    return topic


async def send(database: db.Database, topic: Any, data: Any, *, source: str,
               now: float) -> str:
    """Store an event (and its event run); return its id."""
    return await _store(database, runs.new_event(check_topic(topic), data, source, now), now)


async def _store(database: db.Database, event: models.Event, now: float) -> str:
    await database.write(lambda tx: runs.insert_events(tx, [event], now))
    return event.id


async def trigger(database: db.Database, reg: registry.Registry, name: str, *,
                  text: str | None, source: str, now: float) -> str:
    """mechanic/user/trigger (or mechanic/user/text with `text`) to one task; return the event id."""
    compiled = reg.tasks.get(name)
    if compiled is None:
        raise errors.NotFound(f"no task named {name!r}")
    topic = "mechanic/user/trigger" if text is None else "mechanic/user/text"
    if topic not in compiled.topics:
        raise errors.InvalidInput(f"task {name!r} does not subscribe to {topic}")
    if not compiled.task.enabled:
        raise errors.InvalidInput(f"task {name!r} is disabled")
    return await _store(database, runs.new_event(topic, text, source, now,
                                                 task_ids=[compiled.id]), now)


def parse_run_id(value: Any) -> int:
    """A run id from user input; NotFound when it cannot be one (also past SQLite's range)."""
    try:
        run_id = int(str(value))
    except ValueError:  # also a number of more than 4300 digits
        run_id = 0
    if not 0 < run_id <= models.MAX_INT64:
        raise errors.NotFound(f"no run with id {str(value)[:40]!r}")
    return run_id


def check_filters(state: str | None, kind: str | None, task: str | None, limit: Any) -> int:
    """Validate run-list filters; return the limit."""
    if task is not None:
        try:
            task.encode()
        except UnicodeEncodeError:  # from a command-line argument that was not UTF-8
            raise errors.InvalidInput(f"bad task name {task!r}: not UTF-8") from None
    if state is not None and state not in set(models.RunState):
        raise errors.InvalidInput(f"bad state {state!r}: one of "
                                  f"{', '.join(s.value for s in models.RunState)}")
    if kind is not None and kind not in set(models.RunKind):
        raise errors.InvalidInput(f"bad kind {kind!r}: one of event, task, action")
    try:
        number = int(limit)
    except (TypeError, ValueError):
        raise errors.InvalidInput(f"bad limit {limit!r}: expected a whole number") from None
    if not 1 <= number <= 10_000:
        raise errors.InvalidInput(f"bad limit {limit!r}: 1 to 10000")
    return number


async def move_run(database: db.Database, action: str, run_id: int, now: float,
                   redact: Any) -> dict[str, Any]:
    """`retry` or `cancel` a run (the CLI's and the API's); the run as it is now, redacted."""
    move = {"retry": runs.retry, "cancel": runs.cancel}[action]
    return await database.write(lambda tx: run_json(tx, move(tx, run_id, now), redact))


def run_json(tx: db.Tx, run: models.Run, redact: Any, *, detail: bool = False) -> dict[str, Any]:
    """A run for people and scripts; action options pass through the executor's redaction."""
    out = run.to_json()
    if run.kind is models.RunKind.ACTION:
        out["options"] = redact(run.action_type, run.options)
    if detail:
        event = tx.one("event_by_id", {"id": run.event_id})
        out["event"] = None if event is None else {
            "id": event["id"], "topic": event["topic"], "source": event["source"],
            "data": models.loads(event["data"]), "created_at": models.iso(event["created_at"]),
            "parent_id": event["parent_id"], "webhook_request_id": event["webhook_request_id"],
        }
        out["failed_attempts"] = runs.attempts(tx, run.id)
    return out
