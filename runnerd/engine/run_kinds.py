"""What each kind of run does: event → task runs; task → render → action runs; action → executor.

The one place each is performed: `route` (an event run), `task_run`, and `action_run` /
`action_run_now` (an action run, awaited or, for an in-process executor, synchronously). Where
and when they are called is the engine's choice (see the package docstring). A handler never
writes: it returns task runs to store or a `runs.Outcome` that the worker records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from runnerd import actions, errors, models
from runnerd.liquid import render
from runnerd.models import RunKind
from runnerd.queue import runs
from runnerd.store import cache, db
from runnerd.tasks import registry

logger = logging.getLogger(__name__)

LOOP_ERROR = ("loop protection: this run's actions are identical to those of the task's run on "
              "the parent event; none was performed")


class Handlers:
    """The code of the three run kinds, sharing the registry in force, executors and clock."""

    def __init__(
        self,
        get_registry: Callable[[], registry.Registry],
        executors: actions.Registry,
        *,
        reader: db.Reader | None,
        clock: Callable[[], float],
    ) -> None:
        self.get_registry = get_registry
        self.executors = executors
        #: the action types performed in the transaction that finishes their task run
        self.inline_types = frozenset(name for name, ex in executors.items() if ex.inline)
        #: a read-only connection for this (the event loop's) thread: the cache a render
        #: reads and the loop protection's lookup; None in previews
        self.reader = reader
        self.clock = clock

    def route(self, tx: db.Tx, event: models.Event,
              now: float) -> tuple[list[str], list[dict[str, Any]]]:
        """Perform an event run: the event filters, then one task run per enabled subscribed
        task (delayed by its offset), and their names (a `runs.Route`).

        Called on the database thread, inside the transaction `tx` that stores the event (the
        ingest's batch: `runs.insert_events`) or that finds its event run due (the worker's
        turn: `runs.route_due`).
        """
        reg = self.get_registry()
        if reg.event_filters and event.topic != models.EVENT_ERROR_TOPIC:
            self._filter(reg, tx, event, now)
        tz = reg.settings.tz
        children, names = [], []
        for compiled, sub in reg.subscribers(event):
            run_at = sub.offset.apply(now, tz) if sub.offset else None
            children.append(runs.run_row(RunKind.TASK, event.id, now, run_at=run_at,
                                         task_name=compiled.name))
            names.append(compiled.name)
        return names, children

    def _filter(self, reg: registry.Registry, tx: db.Tx, event: models.Event,
                now: float) -> None:
        """Mechanic's event filters: each renders with `event` and `cache` (read in `tx`);
        raises `runs.NotRouted` when one renders `false` (the event is skipped) or fails
        (its event run fails, and mechanic/errors/event tells the error-handling tasks).
        mechanic/errors/event itself is never filtered: a filter failing on every event
        would hide its own error."""
        for name, template in reg.event_filters:
            variables = {"event": event.to_liquid(None), "cache": cache.View(tx, now)}
            try:
                out = reg.renderer.text(template, variables)
            except errors.RenderError as exc:
                message = f"event filter {name!r}: {exc.message}"
                data = {"message": message, "event": _event_summary(event),
                        "event_filter": {"name": name}}
                raise runs.NotRouted(error=message, events=[runs.new_event(
                    models.EVENT_ERROR_TOPIC, data, "runnerd", now, parent_id=event.id)]) from None
            if out.strip() == "false":
                raise runs.NotRouted(result={"tasks": [], "skipped_by": name})

    def variables(self, compiled: registry.Compiled, event: models.Event,
                  parent: dict[str, Any] | None, now: float,
                  *, preview: bool = False) -> dict[str, Any]:
        """The Liquid environment of a task run (Mechanic's)."""
        return task_variables(self.get_registry(), compiled, event, parent,
                              cache.View(None if preview else self.reader, now),
                              preview=preview)

    def task_run(self, job: runs.Job) -> runs.Outcome:
        """Render the task; only a render with no error creates its action runs. A database
        that cannot be read while rendering (the cache, the loop protection's lookup: a
        PostgreSQL server gone) is not the task's fault: the run is retried later."""
        try:
            return self._task_run(job)
        except errors.DatabaseError as exc:
            return runs.Outcome(job.run, ok=False, error=f"not rendered: {exc.message}",
                                retryable=True, finished_at=self.clock())

    def _task_run(self, job: runs.Job) -> runs.Outcome:
        run, now = job.run, self.clock()
        reg = self.get_registry()
        compiled = reg.tasks.get(run.task_name or "")
        follow_up = self._task_error(job, compiled)
        if compiled is None or not compiled.task.enabled:
            why = "was removed from the configuration" if compiled is None else "is disabled"
            return runs.Outcome(run, ok=False, error=f"task {run.task_name!r} {why}",
                                follow_up=follow_up, finished_at=now)
        try:
            result = reg.renderer.render(compiled.template,
                                         self.variables(compiled, job.event, job.parent, now))
            if not result.errors:
                for spec in result.actions:
                    self._validate(spec)
        except (errors.RenderError, errors.InvalidAction) as exc:
            return runs.Outcome(run, ok=False, error=exc.message, follow_up=follow_up,
                                finished_at=self.clock())
        summary = {"logs": result.logs, "errors": result.errors,
                   "actions": len(result.actions)}
        if not result.errors and self._repeats_predecessor(compiled.name, job.event,
                                                           result.actions):
            return runs.Outcome(run, ok=False, result=summary, error=LOOP_ERROR,
                                follow_up=follow_up, finished_at=self.clock())
        if result.errors:
            message = "; ".join(e if isinstance(e, str) else models.dumps(e)
                                for e in result.errors)
            return runs.Outcome(run, ok=False, result=summary, error=message,
                                follow_up=follow_up, finished_at=self.clock())
        finished = self.clock()
        children = [
            runs.run_row(RunKind.ACTION, job.event.id, finished, task_name=compiled.name,
                         action_type=spec.type, options=spec.options, meta=spec.meta,
                         perform_event=spec.perform_event, task_run_id=run.id)
            for spec in result.actions
        ]
        return runs.Outcome(run, ok=True, result=summary, children=children,
                            follow_up=follow_up, finished_at=finished,
                            inline_types=self.inline_types,
                            perform_inline=lambda child: self.action_run_now(
                                runs.Job(child, job.event)))

    def _repeats_predecessor(self, task_name: str, event: models.Event,
                             specs: list[models.ActionSpec]) -> bool:
        """Mechanic's loop protection: True when this run's actions are identical to those of
        the same task's run on the parent event (a task answering its own event or
        mechanic/actions/perform with the same actions would otherwise run forever)."""
        if not specs or event.parent_id is None or self.reader is None:
            return False
        before = self.reader.all("predecessor_actions", {"parent_id": event.parent_id,
                                                         "task_name": task_name})
        return [(r["action_type"], r["options"]) for r in before] == [
            (spec.type, models.dumps(spec.options)) for spec in specs]

    def _validate(self, spec: models.ActionSpec) -> None:
        executor = self.executors.get(spec.type)
        if executor is None:
            known = ", ".join(sorted(self.executors))
            raise errors.InvalidAction(f"unknown action type {spec.type!r} (known: {known})")
        executor.validate(spec.options)

    async def action_run(self, job: runs.Job) -> runs.Outcome:
        """Perform the action with its original options (a claimed run)."""
        start = self._start_action(job)
        if isinstance(start, runs.Outcome):
            return start
        executor, ctx, follow_up = start
        try:
            result = await executor.perform(job.run.options, ctx)
        except (errors.ActionFailed, errors.InvalidAction) as exc:
            return self._action_failed(job.run, exc, follow_up)
        return self._action_done(job.run, result, follow_up)

    def action_run_now(self, job: runs.Job) -> runs.Outcome:
        """`action_run` for an in-process executor, synchronously: on the database thread, in
        the transaction that finishes its task run (see `runs.Outcome.perform_inline`)."""
        start = self._start_action(job)
        if isinstance(start, runs.Outcome):
            return start
        executor, ctx, follow_up = start
        try:
            result = cast(actions.InProcess, executor).perform_now(job.run.options, ctx)
        except (errors.ActionFailed, errors.InvalidAction) as exc:
            return self._action_failed(job.run, exc, follow_up)
        return self._action_done(job.run, result, follow_up)

    def _start_action(self, job: runs.Job) -> runs.Outcome | tuple[
            actions.Executor, actions.Context, Callable[[models.Run], list[models.Event]]]:
        """The executor, context and follow-up of an action run, or its failed outcome (its
        task was removed or disabled, its type is unknown)."""
        run = job.run
        compiled = self.get_registry().tasks.get(run.task_name or "")
        executor = self.executors.get(run.action_type or "")
        follow_up = self._action_follow_up(job, compiled, executor)
        now = self.clock()
        if compiled is None or not compiled.task.enabled:
            why = "was removed from the configuration" if compiled is None else "is disabled"
            return runs.Outcome(run, ok=False, error=f"task {run.task_name!r} {why}",
                                follow_up=follow_up, finished_at=now)
        if executor is None:
            return runs.Outcome(run, ok=False, error=f"unknown action type {run.action_type!r}",
                                follow_up=follow_up, finished_at=now)
        return executor, actions.Context(run=run, event=job.event, now=now), follow_up

    def _action_failed(self, run: models.Run, exc: errors.ActionFailed | errors.InvalidAction,
                       follow_up: Callable[[models.Run], list[models.Event]]) -> runs.Outcome:
        retryable = isinstance(exc, errors.ActionFailed) and exc.retryable
        return runs.Outcome(run, ok=False, error=exc.message, retryable=retryable,
                            follow_up=follow_up, finished_at=self.clock())

    def _action_done(self, run: models.Run, result: Any,
                     follow_up: Callable[[models.Run], list[models.Event]]) -> runs.Outcome:
        if isinstance(result, actions.Deferred):
            return runs.Outcome(run, ok=True, deferred=result.apply, send=result.send,
                                follow_up=follow_up, finished_at=self.clock())
        return runs.Outcome(run, ok=True, result=result, follow_up=follow_up,
                            finished_at=self.clock())

    def interrupted(self, job: runs.Job, error: str) -> runs.Outcome:
        """The failure of a run whose last allowed attempt was interrupted (a `runs.Fail`),
        decided without performing it: with its kind's follow-up, as if performing it had
        failed (mechanic/errors/action or /task; mechanic/actions/perform too when its task
        subscribes). An event run is never left started (it is routed in the transaction that
        finds it), so it has none."""
        run = job.run
        compiled = self.get_registry().tasks.get(run.task_name or "")
        follow_up = None
        if run.kind is RunKind.ACTION:
            follow_up = self._action_follow_up(job, compiled,
                                               self.executors.get(run.action_type or ""))
        elif run.kind is RunKind.TASK:
            follow_up = self._task_error(job, compiled)
        return runs.Outcome(run, ok=False, error=error, follow_up=follow_up,
                            finished_at=self.clock())

    def _task_error(self, job: runs.Job,
                    compiled: registry.Compiled | None) -> Callable[[models.Run], list[models.Event]]:
        """mechanic/errors/task when the task run fails (never for an error-handling task)."""

        def follow_up(final: models.Run) -> list[models.Event]:
            if final.state is not models.RunState.FAILED or job.event.topic in models.ERROR_TOPICS:
                return []
            data = {"message": final.error, "event": _event_summary(job.event),
                    "task": self._task_summary(job.run.task_name, compiled, final)}
            return [runs.new_event("mechanic/errors/task", data, "runnerd", self.clock(),
                                   parent_id=job.event.id)]

        return follow_up

    def _task_summary(self, name: str | None, compiled: registry.Compiled | None,
                      run: models.Run | None) -> dict[str, Any]:
        """An error event's `task`, as Mechanic's has it (the fields runnerd knows)."""
        out: dict[str, Any] = {"name": name}
        if compiled is not None:
            out.update(id=compiled.id, enabled=compiled.task.enabled,
                       subscriptions=[s.topic + (str(s.offset) if s.offset else "")
                                      for s in compiled.subscriptions],
                       created_at=models.iso(self.get_registry().first_seen.get(compiled.name)))
        if run is not None:
            out["run"] = _run_summary(run)
        return out

    def _action_follow_up(
        self, job: runs.Job, compiled: registry.Compiled | None,
        executor: actions.Executor | None,
    ) -> Callable[[models.Run], list[models.Event]]:
        """mechanic/actions/perform to the task (if it subscribes); mechanic/errors/action."""

        def follow_up(final: models.Run) -> list[models.Event]:
            wants_perform = (
                compiled is not None and models.PERFORM_TOPIC in compiled.topics
                and final.perform_event and (executor is None or executor.perform_event)
            )
            failed = final.state is models.RunState.FAILED
            if not wants_perform and not failed:
                return []  # the common case: nothing to tell, nothing to build
            now, events = self.clock(), []
            options = self.executors.redact(final.action_type, final.options)
            action = {"type": final.action_type, "options": options, "meta": final.meta,
                      "run": _run_summary(final)}
            if wants_perform and compiled is not None:
                events.append(runs.new_event(models.PERFORM_TOPIC, action, "runnerd", now,
                                             parent_id=job.event.id, task_ids=[compiled.id]))
            if failed and job.event.topic not in models.ERROR_TOPICS:
                data = {"message": final.error, "event": _event_summary(job.event),
                        "task": self._task_summary(final.task_name, compiled, None),
                        "action": action}
                events.append(runs.new_event("mechanic/errors/action", data, "runnerd", now,
                                             parent_id=job.event.id))
            return events

        return follow_up


def task_variables(reg: registry.Registry, compiled: registry.Compiled, event: models.Event,
                   parent: dict[str, Any] | None, cache_view: cache.View,
                   *, preview: bool = False) -> dict[str, Any]:
    """`event`, `task`, `options`, `cache` and the subject variable, as Mechanic gives them.

    Option values that hold Liquid are rendered first, with everything but `options`.
    """
    event_obj = event.to_liquid(parent)
    if preview:
        event_obj["preview"] = True
    variables: dict[str, Any] = {"event": event_obj,
                                 "task": compiled.liquid(reg.first_seen.get(compiled.name)),
                                 "cache": cache_view}
    if event.topic == models.PERFORM_TOPIC:
        variables["action"] = event.data
    elif event.topic in models.ERROR_TOPICS:
        variables["error"] = event.data
    opts = dict(compiled.task.options)
    for key in compiled.liquid_options:
        opts[key] = reg.renderer.render_text(opts[key], variables,
                                         name=f"{compiled.name} (option {key})")
    variables["options"] = opts
    return variables


def _run_summary(run: models.Run) -> dict[str, Any]:
    """A run as Mechanic's action object's `run` has it (`result_meta` holds Shopify API
    counts there; runnerd has none to give). `finished_at` is runnerd's name for `stopped_at`."""
    elapsed = (None if run.started_at is None or run.finished_at is None
               else round((run.finished_at - run.started_at) * 1000))
    return {"id": run.id, "ok": run.state is models.RunState.SUCCEEDED, "error": run.error,
            "result": run.result, "result_meta": {}, "attempts": run.attempts,
            "run_at": models.iso(run.run_at), "enqueued_at": models.iso(run.created_at),
            "started_at": models.iso(run.started_at), "stopped_at": models.iso(run.finished_at),
            "finished_at": models.iso(run.finished_at), "elapsed_time_ms": elapsed}


def _event_summary(event: models.Event) -> dict[str, Any]:
    return {"id": event.id, "topic": event.topic, "source": event.source,
            "created_at": models.iso(event.created_at),
            "webhook_request_id": event.webhook_request_id}
