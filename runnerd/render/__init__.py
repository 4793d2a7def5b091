"""Task Liquid: one Environment with Mechanic's tags and filters; a render collects objects.

A render returns the `action`, `log` and `error` objects its tags recorded, in order; static text
and `{{ }}` output only count towards the output limit. On top of standard Liquid (lax
undefined, strict syntax) the Environment has:

- `{% action %}` in all of Mechanic's forms, `{% log %}` and `{% error %}` (see `_ObjectNode`);
- `{% assign x["k"] = v %}` / `{% assign a[a.size] = v %}` / nested paths (see `_AssignNode`);
- `{% break %}` outside any loop, which ends the render keeping what was collected;
- the keywords `newline`, `array` and `hash`, and the filters of `runnerd.filters`;
- limits (`config.Limits`): loop iterations per render, output bytes (text plus collected
  objects; also caps each captured/assigned value), block nesting and render seconds (checked on
  every loop iteration, and enforced by a timer wherever the render is: see `_Alarm`). No
  `include`/`render` tags: tasks have no partials.

Every failure is a `ConfigError` (syntax, at compile) or a `RenderError` (at render), one line
naming the line of the template: `line 3: filter 'parse_json': invalid JSON: …`,
`line 1: limit exceeded: loop_iterations (100000)`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO, cast

import liquid
from liquid import ast as lqast
from liquid import exceptions as lqerr
from liquid import output as lqout
from liquid import parser as lqparser
from liquid import token as lqtok
from liquid.builtin import expressions as lqexpr
from liquid.builtin.tags import for_tag

from runnerd import config, errors, filters, models

#: What `Renderer.compile` returns: a parsed template bound to the renderer's Environment.
Template = liquid.BoundTemplate
_CONTROL = ("__perform_event", "__meta")
_TEXT_CACHE = 1024
_MISSING = object()  # a sentinel no variable can hold
_UNCLOSED = re.compile(r"expected tag (end\w+), found end of expression")


@dataclasses.dataclass(frozen=True, slots=True)
class RenderResult:
    """What one render collected, in render order."""

    actions: list[models.ActionSpec]
    logs: list[Any]
    errors: list[Any]  #: values of `{% error %}`; any => the task run fails


class _Limit(lqerr.ResourceLimitError):
    """A configured limit was hit; the message names it."""

    def __init__(self, name: str, value: object, token: lqtok.Token | None = None) -> None:
        super().__init__(f"limit exceeded: {name} ({value})", token=token)


class _TagError(lqerr.LiquidError):
    """An action, log or error tag could not build its object."""


class _State:
    """Per-render state shared by the nodes through the context."""

    __slots__ = ("actions", "logs", "errors", "limits", "deadline", "iterations", "owned", "sink")

    def __init__(self, limits: config.Limits, sink: lqout.LimitedStringIO) -> None:
        self.actions: list[models.ActionSpec] = []
        self.logs: list[Any] = []
        self.errors: list[Any] = []
        self.limits = limits
        self.deadline = time.monotonic() + limits.render_seconds
        self.iterations = 0
        #: containers this render created by extended assign and that nothing else references:
        #: only these may be changed in place (copy on write keeps assign by value).
        self.owned: dict[int, Any] = {}
        self.sink = sink

    def check_deadline(self, token: lqtok.Token | None) -> None:
        if time.monotonic() > self.deadline:
            raise _Limit("render_seconds", self.limits.render_seconds, token)

    def record(self, kind: str, value: Any, size: int, token: lqtok.Token) -> None:
        """Collect an object; its JSON size counts towards the output limit."""
        self.sink.size += size
        if self.sink.size > self.sink.limit:
            raise _Limit("output_bytes", self.limits.output_bytes, token)
        cast(list[Any], getattr(self, kind)).append(value)


class _Context(liquid.RenderContext):
    """A render context carrying the per-render `_State`."""

    __slots__ = ("state",)

    def __init__(self, template: Template, *, state: _State | None = None, **kwargs: Any) -> None:
        super().__init__(template, **kwargs)
        parent = kwargs.get("parent_context")
        self.state: _State = state if state is not None else cast(_Context, parent).state

    def raise_for_loop_limit(self, length: int = 1) -> None:
        """A loop longer than the whole budget fails before its first iteration."""
        state = self.state
        if length > state.limits.loop_iterations:
            raise _Limit("loop_iterations", state.limits.loop_iterations)
        state.check_deadline(None)


class _Sink(lqout.LimitedStringIO):
    """The top-level output of a task render: counted against the limit, never stored."""

    def write(self, s: str, /) -> int:
        if s:
            self.size += len(s) if s.isascii() else len(s.encode())
            if self.size > self.limit:
                raise lqerr.OutputStreamLimitError("output stream limit reached", token=None)
        return len(s)


# --- for: counts every iteration and watches the clock -------------------------------------


class _ForNode(for_tag.ForNode):
    __slots__ = ()

    def render_to_output(self, context: liquid.RenderContext, buffer: TextIO) -> int:
        state = cast(_Context, context).state
        expression, limit = self.expression, state.limits.loop_iterations
        if expression.reversed:  # `reversed` materialises the sequence: check its size first
            sized = expression.iterable.evaluate(context)
            if isinstance(sized, (range, list, tuple)) and len(sized) > limit:
                raise _Limit("loop_iterations", limit, self.token)
        it, length = expression.evaluate(context)
        if not length:
            return self.default.render(context, buffer) if self.default else 0
        if length > limit:
            raise _Limit("loop_iterations", limit, self.token)
        name = expression.identifier
        forloop = for_tag.ForLoop(name=f"{name}-{expression.iterable}", it=it, length=length,
                                  parentloop=context.parentloop())
        namespace: dict[str, object] = {"forloop": forloop, name: None}
        count = 0
        with context.loop(namespace, forloop):
            for item in forloop:
                state.iterations += 1
                if state.iterations > limit:
                    raise _Limit("loop_iterations", limit, self.token)
                state.check_deadline(self.token)
                namespace[name] = item
                try:
                    count += self.block.render(context, buffer)
                except lqerr.ContinueLoop:
                    continue
                except lqerr.BreakLoop:
                    break
        return count


class _ForTag(for_tag.ForTag):
    node_class = _ForNode


# --- assign: Mechanic's extended form, by value (copy on write) ------------------------------


class _AssignNode(lqast.Node):
    __slots__ = ("root", "keys", "expression")

    def __init__(self, token: lqtok.Token, root: str, keys: list[Any], expression: Any) -> None:
        super().__init__(token)
        self.root, self.keys, self.expression = root, keys, expression

    def __str__(self) -> str:
        path = "".join(f"[{key}]" for key in self.keys)
        return f"{{% assign {self.root}{path} = {self.expression} %}}"

    def render_to_output(self, context: liquid.RenderContext, buffer: TextIO) -> int:
        state = cast(_Context, context).state
        value = self.expression.evaluate(context)
        cap = state.limits.output_bytes
        if (isinstance(value, (str, list, dict)) and len(value) > cap) or (
                isinstance(value, int) and value.bit_length() > 8 * cap):
            raise _Limit("output_bytes", cap, self.token)  # values that double in a short loop
        if state.owned and isinstance(value, (dict, list)):
            _disown(state.owned, value)
        if not self.keys:
            context.locals[self.root] = value
            return 0
        keys = [k.evaluate(context) if isinstance(k, lqexpr.Path) else k for k in self.keys]
        obj = context.resolve(self.root, default=None)
        mine = context.locals.get(self.root, _MISSING) is obj  # not a loop variable or a global
        container = _writable(obj, keys[0], state.owned, mine, self.token)
        context.locals[self.root] = container
        for key, next_key in zip(keys, keys[1:], strict=False):
            child = _item(container, key)
            writable = _writable(child, next_key, state.owned, True, self.token)
            if writable is not child:
                _store(container, key, writable, state.limits.output_bytes, self.token)
            container = writable
        _store(container, keys[-1], value, state.limits.output_bytes, self.token)
        return 0


def _disown(owned: dict[int, Any], value: Any) -> None:
    """`value` is about to gain a second reference: nothing in it may change in place now."""
    stack = [value]
    while stack:
        item = stack.pop()
        owned.pop(id(item), None)
        stack.extend(v for v in (item.values() if isinstance(item, dict) else item)
                     if isinstance(v, (dict, list)))


def _writable(obj: Any, key: Any, owned: dict[int, Any], mine: bool,
              token: lqtok.Token) -> Any:
    if mine and owned.get(id(obj), _MISSING) is obj:
        return obj
    new: Any
    if obj is None or isinstance(obj, liquid.Undefined):
        new = [] if isinstance(key, int) and not isinstance(key, bool) else {}
    elif isinstance(obj, Mapping):
        new = dict(obj.items())
    elif isinstance(obj, (list, tuple)):
        new = list(obj)
    else:
        raise _TagError(f"assign: cannot set [{key!r}] on {type(obj).__name__}", token=token)
    for child in new.values() if isinstance(new, dict) else new:
        if isinstance(child, (dict, list)):
            owned.pop(id(child), None)  # now shared by the copy and the original
    owned[id(new)] = new
    return new


def _item(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        return container.get(key) if not isinstance(key, (dict, list)) else None
    if isinstance(key, int) and -len(container) <= key < len(container):
        return container[key]
    return None


def _store(container: Any, key: Any, value: Any, cap: int, token: lqtok.Token) -> None:
    if isinstance(key, liquid.Undefined) or key is None or isinstance(key, (dict, list)):
        raise _TagError(f"assign: invalid key {key!r}", token=token)
    if isinstance(container, dict):
        container[key] = value
        return
    if not isinstance(key, int) or isinstance(key, bool):
        raise _TagError(f"assign: an array index must be an integer, got {key!r}", token=token)
    index = key + len(container) if key < 0 else key
    if index < 0 or index - len(container) > cap:
        raise _TagError(f"assign: index {key} is out of range", token=token)
    if index < len(container):
        container[index] = value
    else:
        container.extend([None] * (index - len(container)))
        container.append(value)


class _AssignTag(liquid.Tag):
    name = "assign"
    block = False

    def parse(self, stream: liquid.TokenStream) -> lqast.Node:
        token = stream.eat(lqtok.TOKEN_TAG)
        tokens = stream.into_inner(tag=token, eat=False)
        target = lqexpr.Path.parse(self.env, tokens)
        root = target.path[0]
        if not isinstance(root, str):
            raise lqerr.LiquidSyntaxError("assign: expected a variable name", token=target.token)
        tokens.eat(lqtok.TOKEN_ASSIGN)
        expression = lqexpr.FilteredExpression.parse(self.env, tokens)
        return _AssignNode(token, root, list(target.path[1:]), expression)


# --- action, log and error: objects collected by the render ---------------------------------


def _parse_args(env: liquid.Environment, tokens: liquid.TokenStream) -> tuple[list[Any], list[Any]]:
    """Positional and `name: value` arguments; commas are optional (`action "echo" csv`)."""
    positional: list[Any] = []
    named: list[tuple[str, Any]] = []
    while True:
        while tokens.current.kind == lqtok.TOKEN_COMMA:
            next(tokens)
        current = tokens.current
        if current.kind == lqtok.TOKEN_EOF:
            return positional, named
        if current.kind == lqtok.TOKEN_WORD and tokens.peek.kind == lqtok.TOKEN_COLON:
            next(tokens)
            next(tokens)
            named.append((current.value, _parse_value(env, tokens)))
        else:
            positional.append(_parse_value(env, tokens))


def _parse_value(env: liquid.Environment, tokens: liquid.TokenStream) -> Any:
    """A primitive, with filters if a pipe follows (a filter's arguments run to the next pipe)."""
    value = lqexpr.parse_primitive(env, tokens)
    if tokens.current.kind != lqtok.TOKEN_PIPE:
        return value
    chain = lqexpr.Filter.parse(env, tokens, delim=(lqtok.TOKEN_PIPE,))
    return lqexpr.FilteredExpression(value.token, value, chain)


def _block_follows(stream: liquid.TokenStream) -> bool:
    """Whether the next action tag ahead is an `endaction` (typed block with control args)."""
    for tok in stream.tokens[stream.pos + 1:]:
        if tok.kind == lqtok.TOKEN_TAG and tok.value in ("action", "endaction"):
            return tok.value == "endaction"
    return False


def _size(value: Any) -> int:
    """Bytes of plain JSON data, as the task's output stream would hold it."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(text) if text.isascii() else len(text.encode())


class _ObjectNode(lqast.Node):
    """`{% action %}`, `{% log %}` or `{% error %}`: build the object and collect it."""

    __slots__ = ("kind", "type", "positional", "named", "body")

    def __init__(self, token: lqtok.Token, kind: str, type_: Any, positional: list[Any],
                 named: list[tuple[str, Any]], body: lqast.BlockNode | None) -> None:
        super().__init__(token)
        self.kind, self.type, self.positional, self.named, self.body = (
            kind, type_, positional, named, body)

    def __str__(self) -> str:
        return f"{{% {self.kind} %}}"

    def _json(self, context: liquid.RenderContext, buffer: TextIO) -> Any:
        assert self.body is not None
        buf = context.get_buffer(buffer)
        for node in self.body.nodes:
            node.render(context, buf)
        text = buf.getvalue().strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise _TagError(f"{self.kind}: the block is not valid JSON ({exc})",
                            token=self.token) from None

    def render_to_output(self, context: liquid.RenderContext, buffer: TextIO) -> int:
        state = cast(_Context, context).state
        if self.kind == "action":
            spec = self._action(context, buffer)
            size = _size(spec.options) + _size(spec.meta) + len(spec.type) + 40
            state.record("actions", spec, size, self.token)
            return 0
        if self.body is not None:
            value = self._json(context, buffer)
        elif self.named:
            value = {name: expr.evaluate(context) for name, expr in self.named}
        else:
            values = [expr.evaluate(context) for expr in self.positional]
            value = values[0] if len(values) == 1 else values
        value = filters.plain(value)
        state.record(self.kind + "s", value, _size(value) + 12, self.token)
        return 0

    def _action(self, context: liquid.RenderContext, buffer: TextIO) -> models.ActionSpec:
        named = {name: expr.evaluate(context) for name, expr in self.named}
        perform = named.pop("__perform_event", True)
        meta = named.pop("__meta", None)
        options: Any
        if self.type is None:
            obj = self._json(context, buffer)
            if not isinstance(obj, dict):
                raise _TagError('action: the block must be a JSON object like {"type": …, '
                                '"options": …}', token=self.token)
            type_, options = obj.get("type"), obj.get("options")
            meta, perform = obj.get("meta", meta), obj.get("__perform_event", perform)
        else:
            type_ = self.type.evaluate(context)
            if self.body is not None:
                options = self._json(context, buffer)
            elif self.positional:
                values = [expr.evaluate(context) for expr in self.positional]
                if len(values) == 2 and isinstance(values[0], Mapping):
                    options, meta = values  # {% action "http", options, meta %}
                else:
                    options = values[0] if len(values) == 1 else values
            elif named and set(named) <= {"options", "meta"} and "options" in named:
                options, meta = named["options"], named.get("meta", meta)
            else:
                options = named
        if not isinstance(type_, str) or not type_:
            raise _TagError(f"action: the type must be a non-empty string, got {type_!r}",
                            token=self.token)
        if isinstance(options, Mapping) and any(k in options for k in _CONTROL):
            options = dict(options)
            perform = options.pop("__perform_event", perform)
            meta = options.pop("__meta", meta)
        return models.ActionSpec(type=type_, options=filters.plain(options),
                                 meta=filters.plain(meta), perform_event=perform is not False)


class _ObjectTag(liquid.Tag):
    """Parses `action` (typed), `log` and `error` tags; see the module docstring."""

    block = True

    def _body(self, stream: liquid.TokenStream) -> lqast.BlockNode:
        body = lqparser.get_parser(self.env).parse_block(stream, (self.end,))
        stream.expect(lqtok.TOKEN_TAG, value=self.end)
        return body

    def parse(self, stream: liquid.TokenStream) -> lqast.Node:
        token = stream.eat(lqtok.TOKEN_TAG)
        if stream.current.kind != lqtok.TOKEN_EXPRESSION:
            return _ObjectNode(token, self.name, None, [], [], self._body(stream))
        positional, named = _parse_args(self.env, stream.into_inner(tag=token, eat=False))
        if self.name != "action":
            if positional and named:
                raise lqerr.LiquidSyntaxError(
                    f"{self.name}: use either a value or name: value pairs", token=token)
            return _ObjectNode(token, self.name, None, positional, named, None)
        if not positional:
            raise lqerr.LiquidSyntaxError("action: expected the action type first", token=token)
        type_, rest = positional[0], positional[1:]
        mapped = [name for name, _ in named if name not in _CONTROL]
        if rest and mapped:
            raise lqerr.LiquidSyntaxError(
                "action: use either positional options or name: value options", token=token)
        body = None
        if not rest and not mapped and (not named or _block_follows(stream)):
            next(stream)
            body = self._body(stream)
        return _ObjectNode(token, self.name, type_, rest, named, body)


class _ActionTag(_ObjectTag):
    name, end = "action", "endaction"


class _LogTag(_ObjectTag):
    name, end = "log", "endlog"


class _ErrorTag(_ObjectTag):
    name, end = "error", "enderror"


# --- the renderer -----------------------------------------------------------------------------


def _line(token: lqtok.Token | None) -> int | None:
    if token is None or token.start_index < 0:
        return None
    return token.source.count("\n", 0, token.start_index) + 1


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
    line = _line(token)
    text = _UNCLOSED.sub(r"missing {% \1 %}", " ".join(_message(exc, limits).split()))
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


def _wrap(name: str, func: Callable[..., Any], *, pure: bool, limit: int) -> Callable[..., Any]:
    """A filter that names itself in errors; pure filters see Liquid's undefined as None."""
    def call(left: Any, *args: Any, **kwargs: Any) -> Any:
        if pure:
            left, args, kwargs = _defined(left), tuple(map(_defined, args)), (
                {k: _defined(v) for k, v in kwargs.items()} if kwargs else kwargs)
        if isinstance(left, range) and len(left) > limit:
            raise _Limit("loop_iterations", limit)
        try:
            return func(left, *args, **kwargs)
        except (lqerr.ResourceLimitError, RecursionError):
            raise
        except lqerr.LiquidError as exc:
            raise lqerr.FilterArgumentError(f"filter {name!r}: {exc.message}", token=None) from exc
        except Exception as exc:  # noqa: BLE001 - any filter failure is the template's fault
            text = str(exc) if isinstance(exc, (ValueError, TypeError)) else (
                f"{type(exc).__name__}: {exc}")
            raise lqerr.FilterArgumentError(f"filter {name!r}: {text}", token=None) from exc

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
        self.state: _State | None = None
        self.installed = False

    def _on_alarm(self, signum: int, frame: object) -> None:
        state = self.state
        if state is not None and time.monotonic() >= state.deadline:
            raise _Limit("render_seconds", state.limits.render_seconds)

    def arm(self, state: _State) -> bool:
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
        env_class = type("_Environment", (liquid.Environment,), {
            "block_nesting_limit": limits.nesting,
            "context_depth_limit": limits.nesting + 8,  # the parse-time nesting check comes first
            "output_stream_limit": limits.output_bytes,
        })
        env = cast(liquid.Environment, env_class(tolerance=liquid.Mode.STRICT, strict_filters=True))
        for tag in (_ActionTag, _LogTag, _ErrorTag, _AssignTag, _ForTag):
            env.add_tag(tag)
        for partial_tag in ("include", "render"):
            env.tags.pop(partial_tag, None)
        for registered in env.tags.values():
            _locate_errors(registered)
        try:
            table = filters.table(timezone=timezone, clock=clock)
        except ValueError as exc:
            raise errors.ConfigError(f"timezone: {exc}") from None
        limit = limits.loop_iterations
        for name, func in list(env.filters.items()):
            env.filters[name] = _wrap(name, func, pure=False, limit=limit)
        for name, func in table.items():
            env.filters[name] = _wrap(name, func, pure=True, limit=limit)
        self._env = env
        self._texts: dict[str, Template] = {}

    def compile(self, source: str, *, name: str) -> Template:
        """Parse once; a syntax error is a one-line `ConfigError` naming the task and line."""
        try:
            return self._env.from_string(source, name=name)
        except Exception as exc:  # noqa: BLE001 - the parser may fail in any way on bad input
            raise errors.ConfigError(
                f"task {name!r}: {_located(exc, None, self.limits)}") from None

    def render(self, template: Template, variables: Mapping[str, Any]) -> RenderResult:
        """Render a task: the action, log and error objects, in order. Raises `RenderError`."""
        state = self._run(template, variables, _Sink(limit=self.limits.output_bytes))
        return RenderResult(actions=state.actions, logs=state.logs, errors=state.errors)

    def render_text(self, source: str, variables: Mapping[str, Any], *, name: str) -> str:
        """Render `source` as text (compiled once per distinct source): subscriptions, options."""
        template = self._texts.get(source)
        if template is None:
            template = self.compile(source, name=name)
            if len(self._texts) >= _TEXT_CACHE:
                self._texts.clear()
            self._texts[source] = template
        buffer = lqout.LimitedStringIO(limit=self.limits.output_bytes)
        self._run(template, variables, buffer)
        return buffer.getvalue()

    def _run(self, template: Template, variables: Mapping[str, Any],
             buffer: lqout.LimitedStringIO) -> _State:
        state = _State(self.limits, buffer)
        namespace: dict[str, object] = {"newline": "\n", "array": [], "hash": {}}
        namespace.update(variables)
        context = _Context(template, state=state, globals=namespace)
        node = None
        try:
            armed = _ALARM.arm(state)
            try:
                for node in template.nodes:
                    node.render(context, buffer)
            finally:
                _ALARM.disarm(armed)  # may raise the limit itself, when the alarm was due
        except lqerr.LiquidInterrupt:
            pass  # `break`/`continue` outside a loop: the render ends, what it collected stands
        except Exception as exc:  # noqa: BLE001 - no other exception type may escape a render
            fallback = node.token if node is not None else None
            raise errors.RenderError(_located(exc, fallback, self.limits)) from exc
        return state
