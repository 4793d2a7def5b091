"""The tags task Liquid adds or replaces, and the per-render state they share.

- `for`: counts every iteration against `loop_iterations` and watches the clock;
- `{{ }}`: refuses nested data that would print longer than the output left (`State.check_room`);
- `assign`: Mechanic's extended form (`x["k"] = v`, `a[a.size] = v`, nested paths), by value;
- `action`, `log` and `error`: build an object and collect it in the render's `State`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, TextIO, cast

import liquid
from liquid import ast as lqast
from liquid import exceptions as lqerr
from liquid import output as lqout
from liquid import parser as lqparser
from liquid import stringify
from liquid import token as lqtok
from liquid.builtin import expressions as lqexpr
from liquid.builtin import output
from liquid.builtin.tags import comment_tag, for_tag

from runnerd import config, models
from runnerd.liquid import compat, filters

CONTROL = ("__perform_event", "__meta")  #: action arguments that steer, not options
_MISSING = object()  # a sentinel no variable can hold


class Limit(lqerr.ResourceLimitError):
    """A configured limit was hit; the message names it (after `culprit`, when given)."""

    def __init__(self, name: str, value: object, token: lqtok.Token | None = None, *,
                 culprit: str = "") -> None:
        prefix = f"{culprit}: " if culprit else ""
        super().__init__(f"{prefix}limit exceeded: {name} ({value})", token=token)


class TagError(lqerr.LiquidError):
    """An action, log or error tag could not build its object."""


class TaskSink(lqout.LimitedStringIO):
    """The top-level output of a task render: counted against the limit, kept only until
    `State.collect_text` reads the JSON objects written in it."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.pending: list[str] = []

    def write(self, s: str, /) -> int:
        if s:
            self.size += len(s) if s.isascii() else len(s.encode())
            if self.size > self.limit:
                raise lqerr.OutputStreamLimitError("output stream limit reached", token=None)
            self.pending.append(s)
        return len(s)


_DECODER = json.JSONDecoder()
_KINDS = {"action": "actions", "log": "logs", "error": "errors"}


def stream_objects(text: str) -> list[tuple[str, Any]]:
    """The `{"action": …}`, `{"log": …}` and `{"error": …}` objects of a task's text output,
    in order (Mechanic reads task output as a stream of JSON objects). Other JSON values are
    not objects a task can emit, and text that is not JSON ends the reading of that stretch of
    text: both are ignored, as text outside the tags always was in runnerd."""
    found: list[tuple[str, Any]] = []
    index, end = 0, len(text)
    while True:
        while index < end and text[index].isspace():
            index += 1
        if index >= end or text[index] != "{":
            return found
        try:
            value, index = _DECODER.raw_decode(text, index)
        except ValueError:
            return found
        if isinstance(value, dict) and len(value) == 1:
            ((key, inner),) = value.items()
            if key in _KINDS:
                found.append((key, inner))


class State:
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
        """Raise the `render_seconds` limit once the render's time is up."""
        if time.monotonic() > self.deadline:
            raise Limit("render_seconds", self.limits.render_seconds, token)

    def check_room(self, value: Any, token: lqtok.Token, what: str) -> None:
        """Refuse, before it is copied, a value whose JSON would not fit in the output left (a
        value sharing one array many times over would copy for ever), or that nests deeper than
        runnerd takes JSON anywhere (`models.MAX_JSON_DEPTH`)."""
        room = self.sink.limit - self.sink.size
        size = filters.sizes.data(room, value)
        if size > room:
            raise Limit("output_bytes", self.limits.output_bytes, token)
        # Each level of nesting counts at least 2 in `size` (an empty array 1), so only a value
        # measured above 2 × MAX_JSON_DEPTH can nest too deep: most values skip the walk.
        if size > 2 * models.MAX_JSON_DEPTH and models.too_deep(value):
            raise TagError(f"{what}: a value nested more than {models.MAX_JSON_DEPTH} levels "
                           "deep", token=token)

    def collect_text(self) -> None:
        """Collect the objects the task wrote as text since the last call (`stream_objects`);
        the text was counted as it was written."""
        sink = self.sink
        if not isinstance(sink, TaskSink) or not sink.pending:
            return
        text = "".join(sink.pending)
        sink.pending.clear()
        for kind, value in stream_objects(text):
            item = action_spec(value, None) if kind == "action" else value
            cast(list[Any], getattr(self, _KINDS[kind])).append(item)

    def record(self, kind: str, value: Any, size: int, token: lqtok.Token) -> None:
        """Collect an object, after those written as text before it; its JSON size counts
        towards the output limit."""
        self.collect_text()
        self.sink.size += size
        if self.sink.size > self.sink.limit:
            raise Limit("output_bytes", self.limits.output_bytes, token)
        cast(list[Any], getattr(self, kind)).append(value)


class Context(liquid.RenderContext):
    """A render context carrying the per-render `State`."""

    __slots__ = ("state",)

    def __init__(self, template: liquid.BoundTemplate, *, state: State | None = None,
                 **kwargs: Any) -> None:
        super().__init__(template, **kwargs)
        parent = kwargs.get("parent_context")
        self.state: State = state if state is not None else cast(Context, parent).state

    def raise_for_loop_limit(self, length: int = 1) -> None:
        """A loop longer than the whole budget fails before its first iteration."""
        state = self.state
        if length > state.limits.loop_iterations:
            raise Limit("loop_iterations", state.limits.loop_iterations)
        state.check_deadline(None)


# --- for: counts every iteration and watches the clock -------------------------------------


class _ForNode(for_tag.ForNode):
    __slots__ = ()

    def render_to_output(self, context: liquid.RenderContext, buffer: TextIO) -> int:
        state = cast(Context, context).state
        expression, limit = self.expression, state.limits.loop_iterations
        if expression.reversed:  # `reversed` materialises the sequence: check its size first
            sized = expression.iterable.evaluate(context)
            if isinstance(sized, (range, list, tuple)) and len(sized) > limit:
                raise Limit("loop_iterations", limit, self.token)
        it, length = expression.evaluate(context)
        if not length:
            return self.default.render(context, buffer) if self.default else 0
        if length > limit:
            raise Limit("loop_iterations", limit, self.token)
        name = expression.identifier
        forloop = for_tag.ForLoop(name=f"{name}-{expression.iterable}", it=it, length=length,
                                  parentloop=context.parentloop())
        namespace: dict[str, object] = {"forloop": forloop, name: None}
        count = 0
        with context.loop(namespace, forloop):
            for item in forloop:
                state.iterations += 1
                if state.iterations > limit:
                    raise Limit("loop_iterations", limit, self.token)
                state.check_deadline(self.token)
                namespace[name] = item
                try:
                    count += self.block.render(context, buffer)
                except lqerr.ContinueLoop:
                    continue
                except lqerr.BreakLoop:
                    break
        return count


class ForTag(for_tag.ForTag):
    node_class = _ForNode


# --- output: nested data is measured before it is printed ----------------------------------


class _OutputNode(output.OutputNode):
    __slots__ = ()

    def render_to_output(self, context: liquid.RenderContext, buffer: TextIO) -> int:
        value = self.expression.evaluate(context)
        if isinstance(value, (list, tuple, dict)):
            cast(Context, context).state.check_room(value, self.token, "output")
        return buffer.write(compat.ruby_output(value, context.autoescape))


class OutputTag(output.Output):
    node_class = _OutputNode

    def parse(self, stream: liquid.TokenStream) -> output.OutputNode:
        """`{{ … }}`, with keywords read in context (`compat`: `{{ limit }}` is a name)."""
        token = stream.eat(lqtok.TOKEN_OUTPUT)
        expression = stream.expect(lqtok.TOKEN_EXPRESSION)
        return self.node_class(token, lqexpr.FilteredExpression.parse(
            self.env, liquid.TokenStream(compat.tokenize(expression.value, expression))))


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
        state = cast(Context, context).state
        value = self.expression.evaluate(context)
        cap = state.limits.output_bytes
        if (isinstance(value, (str, list, dict)) and len(value) > cap) or (
                isinstance(value, int) and value.bit_length() > 8 * cap):
            raise Limit("output_bytes", cap, self.token)  # values that double in a short loop
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
    index = isinstance(key, int) and not isinstance(key, bool)
    empty = obj is None or isinstance(obj, liquid.Undefined) or (
        isinstance(obj, (list, tuple)) and not obj)  # `array`, given a key, is a hash
    if mine and owned.get(id(obj), _MISSING) is obj and not (empty and not index):
        return obj
    new: Any
    if empty:
        new = [] if index else {}
    elif isinstance(obj, Mapping):
        new = dict(obj.items())
    elif isinstance(obj, (list, tuple)):
        new = list(obj)
    else:
        raise TagError(f"assign: cannot set [{key!r}] on {type(obj).__name__}", token=token)
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
    if isinstance(key, liquid.Undefined) or key is None:
        raise TagError("assign: the key is nil", token=token)
    if isinstance(key, (dict, list)):
        raise TagError(f"assign: a key cannot be {filters.data.kind(key)}", token=token)
    if isinstance(container, dict):
        container[key] = value
        return
    if not isinstance(key, int) or isinstance(key, bool):
        raise TagError(f"assign: an array index must be an integer, got {key!r}", token=token)
    index = key + len(container) if key < 0 else key
    if index < 0 or index - len(container) > cap:
        raise TagError(f"assign: index {key} is out of range", token=token)
    if index < len(container):
        container[index] = value
    else:
        container.extend([None] * (index - len(container)))
        container.append(value)


class AssignTag(liquid.Tag):
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
            named.append((current.value, _parse_value(env, _up_to_next_pair(tokens))))
        else:
            positional.append(_parse_value(env, tokens))


def _up_to_next_pair(tokens: liquid.TokenStream) -> liquid.TokenStream:
    """The tokens of one `name: value` pair's value, which ends where `, name:` starts (so
    `a: x | times: 100.0 | divided_by: y, b: z` gives `b` to the tag, not to `divided_by`);
    `tokens` moves past them."""
    depth, end, items = 0, tokens.pos, tokens.tokens
    while end < len(items):
        kind = items[end].kind
        if kind in (lqtok.TOKEN_LBRACKET, lqtok.TOKEN_LPAREN):
            depth += 1
        elif kind in (lqtok.TOKEN_RBRACKET, lqtok.TOKEN_RPAREN):
            depth -= 1
        elif (kind == lqtok.TOKEN_COMMA and not depth and end + 2 < len(items)
              and items[end + 1].kind == lqtok.TOKEN_WORD
              and items[end + 2].kind == lqtok.TOKEN_COLON):
            break
        end += 1
    value = liquid.TokenStream(iter(items[tokens.pos:end]))
    tokens.pos = end
    return value


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


class ObjectNode(lqast.Node):
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
            raise TagError(f"{self.kind}: the block is not valid JSON ({exc})",
                            token=self.token) from None

    def render_to_output(self, context: liquid.RenderContext, buffer: TextIO) -> int:
        state = cast(Context, context).state
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
        state.check_room(value, self.token, self.kind)
        value = filters.plain(value)
        state.record(self.kind + "s", value, _size(value) + 12, self.token)
        return 0

    def _action(self, context: liquid.RenderContext, buffer: TextIO) -> models.ActionSpec:
        state = cast(Context, context).state
        if self.type is None:
            spec = action_spec(self._json(context, buffer), self.token)
            state.check_room((spec.options, spec.meta), self.token, "action")
            return spec
        named = {name: expr.evaluate(context) for name, expr in self.named}
        perform = named.pop("__perform_event", True)
        meta = named.pop("__meta", None)
        options: Any
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
        state.check_room((options, meta), self.token, "action")
        return _spec(type_, options, meta, perform, self.token)


def _spec(type_: Any, options: Any, meta: Any, perform: Any,
          token: lqtok.Token | None) -> models.ActionSpec:
    if not isinstance(type_, str) or not type_:
        raise TagError(f"action: the type must be a non-empty string, got {type_!r}",
                       token=token)
    if isinstance(options, Mapping) and any(k in options for k in CONTROL):
        options = dict(options)
        perform = options.pop("__perform_event", perform)
        meta = options.pop("__meta", meta)
    return models.ActionSpec(type=type_, options=filters.plain(options),
                             meta=filters.plain(meta), perform_event=perform is not False)


def action_spec(obj: Any, token: lqtok.Token | None) -> models.ActionSpec:
    """The action of an action object's JSON (`{"type": …, "options": …, "meta": …}`), as a
    `{% action %}` block or a task's text output holds it."""
    if not isinstance(obj, dict):
        raise TagError('action: an action must be a JSON object like {"type": …, '
                       '"options": …}', token=token)
    return _spec(obj.get("type"), obj.get("options"), obj.get("meta"),
                 obj.get("__perform_event", True), token)


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
            return ObjectNode(token, self.name, None, [], [], self._body(stream))
        positional, named = _parse_args(self.env, stream.into_inner(tag=token, eat=False))
        if self.name != "action":
            if positional and named:
                raise lqerr.LiquidSyntaxError(
                    f"{self.name}: use either a value or name: value pairs", token=token)
            return ObjectNode(token, self.name, None, positional, named, None)
        if not positional:
            raise lqerr.LiquidSyntaxError("action: expected the action type first", token=token)
        type_, rest = positional[0], positional[1:]
        mapped = [name for name, _ in named if name not in CONTROL]
        if rest and mapped:
            raise lqerr.LiquidSyntaxError(
                "action: use either positional options or name: value options", token=token)
        body = None
        if not rest and not mapped and (not named or _block_follows(stream)):
            next(stream)
            body = self._body(stream)
        return ObjectNode(token, self.name, type_, rest, named, body)


class ActionTag(_ObjectTag):
    name, end = "action", "endaction"


class LogTag(_ObjectTag):
    name, end = "log", "endlog"


class ErrorTag(_ObjectTag):
    name, end = "error", "enderror"


class PermissionsTag(liquid.Tag):
    """`{% permissions %}…{% endpermissions %}`: the Shopify access scopes a Mechanic task
    declares. runnerd has no Shopify: the block is accepted and ignored, its text never read
    as Liquid (as in Mechanic, which reads it as plain text)."""

    name, end = "permissions", "endpermissions"
    block = True

    def parse(self, stream: liquid.TokenStream) -> lqast.Node:
        token = stream.eat(lqtok.TOKEN_TAG)
        while not (stream.current.kind == lqtok.TOKEN_TAG and stream.current.value == self.end):
            if stream.current.kind == lqtok.TOKEN_EOF:
                raise lqerr.LiquidSyntaxError("missing {% endpermissions %}", token=token)
            next(stream)
        return comment_tag.CommentNode(token, text="")


#: What `Renderer` adds to its Environment (replacing Liquid's own `assign`, `for` and output).
TAGS = (ActionTag, LogTag, ErrorTag, AssignTag, ForTag, OutputTag, PermissionsTag)
