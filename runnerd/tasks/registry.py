"""Tasks made ready to run: subscriptions rendered and parsed, code compiled, topics indexed.

A `Registry` is built from `Settings` in one go and never changes (but for `first_seen`, filled
from the database as it is put in force); a reload builds a new one and swaps it in, so a run
always sees one consistent configuration.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runnerd import config, errors, models
from runnerd.config import durations
from runnerd.tasks import options

if TYPE_CHECKING:
    from runnerd.liquid import render

SCHEDULER_PREFIX = "mechanic/scheduler/"
NAMED_SCHEDULES = ("10min", "15min", "20min", "30min", "hourly", "daily", "monthly",
                   "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SYSTEM_TOPICS = frozenset({
    "mechanic/user/trigger", "mechanic/user/text", models.PERFORM_TOPIC, *models.ERROR_TOPICS,
    "runnerd/monitors/down", "runnerd/monitors/up",
})
_NMIN = re.compile(r"^(\d+)min\Z")
#: `options.key` or `options["key"]` in a task's code: Mechanic creates options by reference.
_OPTION_REF = re.compile(r"""options(?:\.([a-z0-9_]+)|\[\s*["']([a-z0-9_]+)["']\s*\])""")


def referenced_options(*sources: str) -> list[str]:
    """Option keys a task's code and subscriptions refer to, in order of first reference."""
    seen: dict[str, None] = {}
    for source in sources:
        for match in _OPTION_REF.finditer(source):
            seen.setdefault(match.group(1) or match.group(2), None)
    return list(seen)


def scheduler_topic_ok(name: str) -> bool:
    """True for a `mechanic/scheduler/<name>` runnerd fires."""
    if name in NAMED_SCHEDULES:
        return True
    match = _NMIN.match(name)
    return match is not None and 0 < int(match.group(1)) <= 60 and 60 % int(match.group(1)) == 0


def check_topic(topic: str) -> str | None:
    """Why a task cannot subscribe to `topic`, or None."""
    if config.USER_TOPIC.match(topic) or topic in SYSTEM_TOPICS:
        return None
    if topic.startswith(SCHEDULER_PREFIX):
        if scheduler_topic_ok(topic[len(SCHEDULER_PREFIX):]):
            return None
        return (f"unknown scheduler topic {topic!r} (10min, 15min, 20min, 30min, Nmin for N "
                "dividing 60, hourly, daily, monday..sunday, monthly)")
    if topic.startswith("shopify/") or topic.startswith("mechanic/"):
        return f"not supported: {topic!r} (runnerd has no Shopify; see docs/topics-and-runs.md)"
    return f"bad topic {topic!r}: expected user/<subject>/<verb> or a mechanic/ or runnerd/ topic"


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    """One line of a task's subscriptions."""

    topic: str
    offset: durations.Offset | None = None


def parse_subscriptions(text: str) -> tuple[list[Subscription], list[str]]:
    """Rendered subscription text → subscriptions, problems."""
    subs, problems = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        topic, _, offset_text = line.partition("+")
        topic = topic.strip()
        offset = None
        if offset_text:
            try:
                offset = durations.parse_offset(offset_text)
            except ValueError as exc:
                problems.append(str(exc))
                continue
        if (why := check_topic(topic)) is not None:
            problems.append(why)
            continue
        subs.append(Subscription(topic, offset))
    return subs, problems


@dataclasses.dataclass(frozen=True, slots=True)
class Compiled:
    """A task ready to run."""

    task: config.Task
    template: Any
    subscriptions: tuple[Subscription, ...]
    #: option keys whose values hold Liquid, rendered per event before the code
    liquid_options: tuple[str, ...] = ()
    #: every topic the task subscribes to (asked of every action run: set once)
    topics: frozenset[str] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "topics", frozenset(s.topic for s in self.subscriptions))

    @property
    def name(self) -> str:
        """The task's name."""
        return self.task.name

    @property
    def id(self) -> str:
        """The task's stable UUID."""
        return self.task.id

    @property
    def only_errors(self) -> bool:
        """Subscribed to error topics only: such a task receives every error."""
        return bool(self.subscriptions) and self.topics <= models.ERROR_TOPICS

    def liquid(self, first_seen: float | None) -> dict[str, Any]:
        """`task` in Liquid; `created_at` is when the daemon first saw the task (nil if not
        known: `Registry.first_seen`)."""
        return {"id": self.id, "name": self.name, "created_at": models.iso(first_seen)}


class Registry:
    """The compiled tasks of one configuration and the topic index."""

    def __init__(self, settings: config.Settings, renderer: render.Renderer) -> None:
        self.settings = settings
        self.renderer = renderer
        problems: list[str] = []
        #: what a user should know that does not stop loading (a task disabled until its
        #: required options are filled), one line each
        self.notes: list[str] = []
        compiled: dict[str, Compiled] = {}
        for task in settings.tasks:
            try:
                compiled[task.name] = self._compile(task, problems)
            except errors.ConfigError as exc:
                problems.extend(exc.problems)
            except errors.RenderError as exc:
                problems.append(f"{task.source}: task {task.name!r}: {exc.message}")
        #: `event_filters:` compiled, in the file's order: (name, template)
        self.event_filters: tuple[tuple[str, Any], ...] = tuple(
            (f.name, self._compile_filter(f, problems)) for f in settings.event_filters)
        if problems:
            raise errors.ConfigError(problems)
        self.tasks: Mapping[str, Compiled] = compiled
        #: when each task was first seen (Unix seconds; `task.created_at`): read from the
        #: database by the daemon as it puts the registry in force (`daemon.remember_tasks`);
        #: empty without a database (`runnerd preview`)
        self.first_seen: dict[str, float] = {}
        index: dict[str, list[tuple[Compiled, Subscription]]] = {}
        for c in compiled.values():
            for sub in c.subscriptions:
                index.setdefault(sub.topic, []).append((c, sub))
        self._index = index

    def _compile(self, task: config.Task, problems: list[str]) -> Compiled:
        where = f"{task.source}: task {task.name!r}"
        task = dataclasses.replace(task, options=options.coerce(task.options))
        text = self.renderer.render_text(task.subscriptions, {"options": dict(task.options)},
                                         name=f"{task.name} (subscriptions)")
        subs, sub_problems = parse_subscriptions(text)
        problems.extend(f"{where}: subscriptions: {p}" for p in sub_problems)
        template = self.renderer.compile(task.code, name=task.name)
        problems.extend(f"{where}: {p}" for p in self.renderer.check(template, models.ACTION_TYPES))
        values = dict(task.options)
        for key in referenced_options(task.code, task.subscriptions):
            if key not in values and options.parse_key(key).required:
                values[key] = None  # validate() reports it as required
        if task.from_tasks_dir and task.enabled and options.missing(values):
            task = dataclasses.replace(task, enabled=False)  # Mechanic's library ships them so
        problems.extend(f"{task.source}: {p}" for p in options.validate(
            values, task=task.name, required=task.enabled))
        if not task.enabled and (unset := options.missing(values)):
            where_to = ('its "options" in the export, or import it into tasks: with '
                        "'runnerd import'" if task.from_tasks_dir
                        else "under options:, then set enabled: true")
            self.notes.append(f"{where}: disabled until its required options are filled: "
                              f"{', '.join(unset)} ({where_to})")
        liquid_options = tuple(k for k in options.text_keys(task.options)
                               if "{{" in task.options[k] or "{%" in task.options[k])
        for key in liquid_options:
            self.renderer.compile(task.options[key], name=f"{task.name} (option {key})")
        return Compiled(task=task, template=template, subscriptions=tuple(subs),
                        liquid_options=liquid_options)

    def _compile_filter(self, event_filter: config.EventFilter, problems: list[str]) -> Any:
        where = f"{event_filter.source}: event filter {event_filter.name!r}"
        try:
            template = self.renderer.compile(event_filter.code, name=event_filter.name,
                                             what="event filter")
        except errors.ConfigError as exc:
            problems.extend(f"{event_filter.source}: {p}" for p in exc.problems)
            return None
        problems.extend(f"{where}: {p}" for p in self.renderer.check(template, models.ACTION_TYPES))
        return template

    @property
    def scheduler_topics(self) -> frozenset[str]:
        """The mechanic/scheduler/* topics some enabled task subscribes to."""
        return frozenset(t for t, subs in self._index.items()
                         if t.startswith(SCHEDULER_PREFIX) and any(c.task.enabled for c, _ in subs))

    def subscribers(self, event: models.Event) -> list[tuple[Compiled, Subscription]]:
        """The enabled tasks that receive `event`, with the subscription that matched.

        Error events go to tasks subscribed only to error topics, and to the task whose run
        failed; events with `task_ids` go only to those tasks.
        """
        out = []
        for compiled, sub in self._index.get(event.topic, ()):
            if not compiled.task.enabled:
                continue
            if event.task_ids is not None and compiled.id not in event.task_ids:
                continue
            if event.topic in models.ERROR_TOPICS and not compiled.only_errors:
                failed_task = (event.data or {}).get("task") or {}
                if failed_task.get("name") != compiled.name:
                    continue
            out.append((compiled, sub))
        return out
