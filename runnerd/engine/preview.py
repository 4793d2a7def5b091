"""Previews: render a task against a synthetic event, perform nothing, report what it would do."""

from __future__ import annotations

from typing import Any

from runnerd import actions, errors
from runnerd.engine import run_kinds
from runnerd.queue import runs
from runnerd.store import cache
from runnerd.tasks import registry


def preview_event(compiled: registry.Compiled, topic: str | None, data: Any,
                  has_data: bool) -> tuple[str, Any]:
    """The event to preview with: the given topic, else the task's first preview event, else its
    first subscription (data nil, or "" for mechanic/user/text)."""
    if topic is not None:
        return topic, data
    if compiled.task.preview_events:
        first = compiled.task.preview_events[0]
        return str(first.get("topic")), data if has_data else first.get("data")
    if not compiled.subscriptions:
        raise errors.InvalidInput(f"task {compiled.name!r} subscribes to nothing: give --topic")
    topic = compiled.subscriptions[0].topic
    default = "" if topic == "mechanic/user/text" else None
    return topic, data if has_data else default


def preview(reg: registry.Registry, executors: actions.Registry, name: str, *,
            topic: str | None = None, data: Any = None, has_data: bool = False,
            now: float) -> dict[str, Any]:
    """`{"event": …, "actions": [{type, options, meta}], "logs": […], "errors": […]}`.

    `event.preview` is true and the cache is empty, as in Mechanic. Actions that would fail
    validation are reported as errors, as the task run would fail.
    """
    compiled = reg.tasks.get(name)
    if compiled is None:
        raise errors.NotFound(f"no task named {name!r}")
    topic, data = preview_event(compiled, topic, data, has_data)
    event = runs.new_event(topic, data, "cli", now)
    out: dict[str, Any] = {"event": {"topic": topic, "data": data}, "actions": [], "logs": [],
                           "errors": []}
    try:
        variables = run_kinds.task_variables(reg, compiled, event, None,
                                            cache.View(None, now), preview=True)
        result = reg.renderer.render(compiled.template, variables)
    except errors.RenderError as exc:
        out["errors"].append(exc.message)
        return out
    out["logs"] = result.logs
    out["errors"] = list(result.errors)
    for spec in result.actions:
        out["actions"].append(spec.to_json())
        executor = executors.get(spec.type)
        try:
            if executor is None:
                raise errors.InvalidAction(f"unknown action type {spec.type!r}")
            executor.validate(spec.options)
        except errors.InvalidAction as exc:
            out["errors"].append(exc.message)
    return out
