"""Task Liquid: one Environment with Mechanic's tags and filters; a render collects objects.

A render returns the `action`, `log` and `error` objects its tags recorded and those it wrote as
text (`{"log": …}`: Mechanic reads task output as a stream of JSON objects; other text is
ignored, see `tags.stream_objects`), in order; all text counts towards the output limit. On top
of standard Liquid (lax undefined, strict syntax) the Environment has:

- `{% action %}` in all of Mechanic's forms, `{% log %}` and `{% error %}` (see `tags`);
- `{% assign x["k"] = v %}` / `{% assign a[a.size] = v %}` / nested paths (see `tags`);
- `{% break %}` outside any loop, which ends the render keeping what was collected;
- the keywords `newline`, `array` and `hash`, and the filters of `runnerd.filters`;
- Mechanic's (Ruby's) meaning of `blank`, of keyword-like names and of nil/false as text
  (see `compat`);
- limits (`config.Limits`): loop iterations per render, output bytes (text plus collected
  objects; also caps each captured/assigned value and, before it is built, each filter result
  that could outgrow its input: `filters.sizes`), block nesting and render seconds (checked on
  every loop iteration, and enforced by a timer wherever the render is: see `_Alarm`). No
  `include`/`render` tags: tasks have no partials.

Every failure is a `ConfigError` (syntax, at compile) or a `RenderError` (at render), one line
naming the line of the template: `line 3: filter 'parse_json': invalid JSON: …`,
`line 1: limit exceeded: loop_iterations (100000)`.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import liquid
from liquid import ast as lqast
from liquid import exceptions as lqerr
from liquid import output as lqout
from liquid import token as lqtok

from runnerd import config, errors, models
from runnerd.liquid import compat, filters, static, tags, tree

#: What `Renderer.compile` returns: a parsed template bound to the renderer's Environment.
Template = liquid.BoundTemplate
_TEXT_CACHE = 1024
_UNCLOSED = re.compile(r"expected tag (end\w+), found end of expression")


@dataclasses.dataclass(frozen=True, slots=True)
class RenderResult:
    """What one render collected, in render order."""

    actions: list[models.ActionSpec]
    logs: list[Any]
    errors: list[Any]  #: values of `{% error %}`; any => the task run fails


def _message(exc: BaseException, limits: config.Limits) -> str:
    if isinstance(exc, lqerr.OutputStreamLimitError):
        return f"limit exceeded: output_bytes ({limits.output_bytes})"
    if isinstance(exc, (lqerr.ContextDepthError, lqerr.BlockNestingError)):
        return f"limit exceeded: nesting ({limits.nesting})"
    if isinstance(exc, RecursionError):  # data (an event's JSON) nested hundreds deep
        return "limit exceeded: nesting (data nested too deeply)"
    if isinstance(exc, lqerr.LoopIterationLimitError):
        return f"limit exceeded: loop_iterations ({limits.loop_iterations})"
    if isinstance(exc, lqerr.LiquidError):
        return str(exc.message)
    return f"{type(exc).__name__}: {exc}"


def _located(exc: BaseException, fallback: lqtok.Token | None, limits: config.Limits) -> str:
    token = getattr(exc, "token", None) or fallback
    line = tree.line(token)
    text = _UNCLOSED.sub(r"missing {% \1 %}", " ".join(_message(exc, limits).split()))
    text = compat.liquid_terms(text)
    return f"line {line}: {text}" if line else text


def _locate_errors(tag: liquid.Tag) -> None:
    """Make `tag` blame itself for parse errors found at the end of an expression (the
    end-of-input token has no position, so the message could not name a line)."""
    parse = tag.get_node

    def get_node(stream: liquid.TokenStream) -> lqast.Node:
        start = stream.current
        try:
            return parse(stream)
        except lqerr.LiquidError as exc:
            if exc.token is None or exc.token.start_index < 0:
                exc.token = start
            raise

    tag.get_node = get_node  # type: ignore[method-assign]


def _defined(value: Any) -> Any:
    return None if isinstance(value, liquid.Undefined) else value


def _own(name: str, text: str) -> str:
    """A filter's message without the filter's name in front (the renderer names it)."""
    for prefix in (f"{name}: ", f"{name} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _wrap(name: str, func: Callable[..., Any], *, pure: bool,
          limits: config.Limits) -> Callable[..., Any]:
    """A filter that names itself in errors and refuses, before building it, a result longer
    than the output cap (`filters.sizes`); pure filters see Liquid's undefined as None."""
    size = filters.sizes.SIZES.get(name)
    as_text = name in compat.TEXT_FILTERS
    cap, iterations = limits.output_bytes, limits.loop_iterations

    def call(left: Any, *args: Any, **kwargs: Any) -> Any:
        if as_text:
            left, args = compat.ruby_arguments(name, left, args)
        if pure:
            left, args, kwargs = _defined(left), tuple(map(_defined, args)), (
                {k: _defined(v) for k, v in kwargs.items()} if kwargs else kwargs)
        if isinstance(left, range) and len(left) > iterations:
            raise tags.Limit("loop_iterations", iterations)
        try:
            if size is not None and size(cap, left, *args, **kwargs) > cap:
                raise filters.sizes.TooLarge
            return func(left, *args, **kwargs)
        except filters.sizes.TooLarge:
            raise tags.Limit("output_bytes", cap, culprit=f"filter {name!r}") from None
        except (lqerr.ResourceLimitError, RecursionError):
            raise
        except lqerr.LiquidError as exc:
            raise lqerr.FilterArgumentError(f"filter {name!r}: {_own(name, str(exc.message))}",
                                            token=None) from exc
        except Exception as exc:  # noqa: BLE001 - any filter failure is the template's fault
            text = str(exc) if isinstance(exc, (ValueError, TypeError)) else (
                f"{type(exc).__name__}: {exc}")
            raise lqerr.FilterArgumentError(f"filter {name!r}: {_own(name, text)}",
                                            token=None) from exc

    for flag in ("with_context", "with_environment"):
        if getattr(func, flag, False):
            setattr(call, flag, True)
    return call


class _Alarm:
    """Raises the `render_seconds` limit wherever a render is when its time is up.

    The loop check covers long loops; this covers one long step, such as a catastrophic regular
    expression (`re` takes no timeout, but its matcher checks for signals while it backtracks) or
    a slow filter. A timer of the process's CPU time (ITIMER_VIRTUAL, whose SIGVTALRM nothing
    else uses: SIGALRM is pytest-timeout's) fires once the render could have used its budget, then
    every 50 ms; the handler raises the limit in the render once the wall-clock deadline has
    passed. Python runs signal handlers in the main thread only, where the daemon and the command
    line render; a render in another thread gets the loop checks alone.
    """

    def __init__(self) -> None:
        self.state: tags.State | None = None
        self.installed = False

    def _on_alarm(self, signum: int, frame: object) -> None:
        state = self.state
        if state is not None and time.monotonic() >= state.deadline:
            raise tags.Limit("render_seconds", state.limits.render_seconds)

    def arm(self, state: tags.State) -> bool:
        """Start timing `state`'s render; False when it cannot be timed (not the main thread)."""
        if self.state is not None or threading.current_thread() is not threading.main_thread():
            return False
        if not self.installed:
            signal.signal(signal.SIGVTALRM, self._on_alarm)
            self.installed = True
        self.state = state
        signal.setitimer(signal.ITIMER_VIRTUAL, max(state.deadline - time.monotonic(), 0.001),
                         0.05)
        return True

    def disarm(self, armed: bool) -> None:
        """Stop timing."""
        if armed:
            try:
                signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            finally:  # an alarm already due raises as the timer stops: still clean up
                self.state = None


_ALARM = _Alarm()


class Renderer:
    """Compiles and renders task Liquid with Mechanic's tags, filters and limits."""

    def __init__(self, *, timezone: str = "UTC", limits: config.Limits = config.Limits(),
                 clock: Callable[[], float] = time.time) -> None:
        self.timezone = timezone
        self.limits = limits
        compat.install()
        env_class = type("_Environment", (liquid.Environment,), {
            "block_nesting_limit": limits.nesting,
            "context_depth_limit": limits.nesting + 8,  # the parse-time nesting check comes first
            "output_stream_limit": limits.output_bytes,
        })
        env = cast(liquid.Environment, env_class(tolerance=liquid.Mode.STRICT, strict_filters=True))
        for tag in tags.TAGS:
            env.add_tag(tag)
        for partial_tag in ("include", "render"):
            env.tags.pop(partial_tag, None)
        for registered in env.tags.values():
            _locate_errors(registered)
        try:
            table = filters.table(timezone=timezone, clock=clock,
                                  output_cap=limits.output_bytes)
        except ValueError as exc:
            raise errors.ConfigError(f"timezone: {exc}") from None
        for name, func in list(env.filters.items()):
            env.filters[name] = _wrap(name, func, pure=False, limits=limits)
        for name, func in table.items():
            env.filters[name] = _wrap(name, func, pure=True, limits=limits)
        self._env = env
        self._texts: dict[str, Template] = {}

    def compile(self, source: str, *, name: str, what: str = "task") -> Template:
        """Parse once; a syntax error is a one-line `ConfigError` naming the task (`what`) and
        line."""
        try:
            template = self._env.from_string(source, name=name)
        except Exception as exc:  # noqa: BLE001 - the parser may fail in any way on bad input
            raise errors.ConfigError(
                f"{what} {name!r}: {_located(exc, None, self.limits)}") from None
        compat.mechanic_comparisons(template.nodes)
        return template

    def check(self, template: Template, action_types: frozenset[str]) -> list[str]:
        """What would fail when `template` runs, found without running it, one line each in
        line order: unknown filters and literal action types not in `action_types`; a Shopify
        filter or action is named as needing Shopify."""
        found: list[tuple[int, str]] = []
        for name, line in static.filters(template.nodes):
            if name not in self._env.filters:
                found.append((line or 0, "needs Shopify: the 'shopify' filter" if name == "shopify"
                               else f"unknown filter {name!r}"))
        for kind, line in static.action_types(template.nodes):
            if kind not in action_types:
                found.append((line or 0, "needs Shopify: the 'shopify' action" if kind == "shopify"
                               else f"unknown action type {kind!r} (known: "
                               f"{', '.join(sorted(action_types))})"))
        return [f"line {line}: {what}" if line else what for line, what in sorted(found)]

    def render(self, template: Template, variables: Mapping[str, Any]) -> RenderResult:
        """Render a task: the action, log and error objects, in order. Raises `RenderError`."""
        state = self._run(template, variables, tags.TaskSink(limit=self.limits.output_bytes))
        return RenderResult(actions=state.actions, logs=state.logs, errors=state.errors)

    def render_text(self, source: str, variables: Mapping[str, Any], *, name: str) -> str:
        """Render `source` as text (compiled once per distinct source): subscriptions, options."""
        template = self._texts.get(source)
        if template is None:
            template = self.compile(source, name=name)
            if len(self._texts) >= _TEXT_CACHE:
                self._texts.clear()
            self._texts[source] = template
        return self.text(template, variables)

    def text(self, template: Template, variables: Mapping[str, Any]) -> str:
        """Render a compiled template as text (an event filter). Raises `RenderError`."""
        buffer = lqout.LimitedStringIO(limit=self.limits.output_bytes)
        self._run(template, variables, buffer)
        return buffer.getvalue()

    def _run(self, template: Template, variables: Mapping[str, Any],
             buffer: lqout.LimitedStringIO) -> tags.State:
        state = tags.State(self.limits, buffer)
        namespace: dict[str, object] = {"newline": "\n", "array": [], "hash": {}}
        namespace.update(variables)
        context = tags.Context(template, state=state, globals=namespace)
        node = None
        try:
            armed = _ALARM.arm(state)
            try:
                try:
                    for node in template.nodes:
                        node.render(context, buffer)
                except lqerr.LiquidInterrupt:
                    pass  # `break`/`continue` outside a loop: the render ends, what it
                    # collected stands
                state.collect_text()
            finally:
                _ALARM.disarm(armed)  # may raise the limit itself, when the alarm was due
        except errors.DatabaseError:
            raise  # the database, not the template: the render is retried (run_kinds)
        except Exception as exc:  # noqa: BLE001 - no other exception type may escape a render
            fallback = node.token if node is not None else None
            raise errors.RenderError(_located(exc, fallback, self.limits)) from exc
        return state
