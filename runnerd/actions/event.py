"""The event action: a new `user/*/*` event, child of the current one, now or at `run_at`."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from runnerd import actions, config, errors
from runnerd.queue import runs

ALLOWED = {"topic", "data", "run_at", "task_id", "task_ids"}


def parse_time(value: Any) -> float | None:
    """`run_at`: Unix seconds (number or digits) or an ISO 8601 time; None for null."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise errors.InvalidAction(f"event: bad run_at {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidAction(
            f"event: bad run_at {value!r}: expected Unix seconds or an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _task_ids(options: dict[str, Any]) -> list[str] | None:
    if "task_id" in options and "task_ids" in options:
        raise errors.InvalidAction("event: give task_id or task_ids, not both")
    ids = options.get("task_ids", [options["task_id"]] if "task_id" in options else None)
    if ids is None:
        return None
    if not isinstance(ids, list):
        raise errors.InvalidAction("event: task_ids must be a list of task ids")
    for item in ids:
        try:
            uuid.UUID(str(item))
        except ValueError:
            raise errors.InvalidAction(f"event: bad task id {item!r}: expected a UUID") from None
    return [str(i) for i in ids]


def check(options: Any) -> tuple[str, Any, float | None, list[str] | None]:
    """Validate; return topic, data, run_at, task_ids."""
    if not isinstance(options, dict):
        raise errors.InvalidAction('event: options must be {"topic": ..., "data": ...}')
    unknown = sorted(k for k in options if k not in ALLOWED and not str(k).startswith("__"))
    if unknown:
        raise errors.InvalidAction(f"event: unknown option(s) {', '.join(map(repr, unknown))}")
    topic = options.get("topic")
    if not isinstance(topic, str) or not config.USER_TOPIC.match(topic):
        raise errors.InvalidAction(f"event: topic must be user/<subject>/<verb>, got {topic!r}")
    if "data" not in options:
        raise errors.InvalidAction("event: data is required (it may be null)")
    return topic, options["data"], parse_time(options.get("run_at")), _task_ids(options)


class EventExecutor(actions.InProcess):
    """`event`: topic, data, run_at, task_id / task_ids."""

    type = "event"

    def validate(self, options: Any) -> None:
        """Raise InvalidAction for a bad topic, run_at or task ids."""
        check(options)

    def perform_now(self, options: Any, ctx: actions.Context) -> actions.Deferred:
        """Store the child event (and its event run) with the run's success."""
        topic, data, run_at, task_ids = check(options)
        event = runs.new_event(topic, data, "action", ctx.now, parent_id=ctx.event.id,
                               task_ids=task_ids, run_at=run_at)

        def apply(tx: Any) -> str:
            runs.insert_events(tx, [event], ctx.now)
            return event.id

        return actions.Deferred(apply)
