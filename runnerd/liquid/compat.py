"""Where Mechanic's Liquid (Ruby Liquid inside Rails) differs from python-liquid's defaults.

- **Variable names that are keywords elsewhere.** Ruby Liquid reads `limit`, `offset`, `in`,
  `with`, `required`, `cols`, `reversed`, `for`, `as`, `if` and `else` as keywords only where a
  tag gives them a meaning (`for x in items reversed limit: 2`); anywhere else they are names
  (`{% assign limit = 50 %}`, `{{ options.limit }}`, `limit: limit`). python-liquid's expression
  tokenizer makes them keywords everywhere, so `contextual_keywords` turns such a token back
  into a name wherever a keyword could not stand: first in an expression, or after anything
  that is not the end of an operand (`:`, `,`, `.`, `[`, `(`, `=`, an operator, `and`, `or`,
  `|`). `install` makes python-liquid's tokenizer do so; a template that parsed before parses
  the same (only what was a syntax error gains a meaning).
- **`blank`** is Rails' `blank?`: nil, false, a missing variable, an empty or whitespace-only
  string, an empty array or hash (python-liquid leaves nil, false and missing values out).
  `mechanic_comparisons` gives the `==`/`!=` comparisons of a parsed template with `blank`
  on either side this meaning.
- **nil and false in text filters**: Ruby's `to_s` makes nil `""` and false `"false"`, never
  Python's `None`/`False` (`ruby_text`).
- **Output of arrays and hashes** (`ruby_output`): `{{ array }}` writes each item as `{{ }}`
  would, nested arrays too (nil as nothing, false as `false`); `{{ hash }}` writes Ruby Liquid's
  inspect form (`{"a"=>1, "b"=>nil}`), never Python's `repr`.
- **Messages in Liquid's words** (`liquid_terms`): nil, true, false, string, array, hash and
  number, never Python's names for them or a Python function's signature.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import liquid
from liquid import ast as lqast
from liquid import expression as lqexpression
from liquid import stream as lqstream
from liquid import stringify
from liquid import token as lqtok
from liquid.builtin import expressions as lqexpr
from liquid.builtin.expressions import logical, primitive
from liquid.builtin.tags import case_tag

from runnerd.liquid import tree
from runnerd.liquid.filters import data

#: Keyword tokens that are plain names wherever a keyword could not stand.
NAMES = frozenset({
    lqtok.TOKEN_IN, lqtok.TOKEN_OFFSET, lqtok.TOKEN_LIMIT, lqtok.TOKEN_REVERSED,
    lqtok.TOKEN_COLS, lqtok.TOKEN_WITH, lqtok.TOKEN_FOR, lqtok.TOKEN_AS, lqtok.TOKEN_IF,
    lqtok.TOKEN_ELSE, lqtok.TOKEN_REQUIRED,
})
#: Tokens after which a keyword keeps its meaning: they end an operand (`items limit: 2`,
#: `(1..3) reversed`, `x in items`) or are themselves such a keyword (`reversed limit: 2`).
_OPERAND_ENDS = NAMES | {
    lqtok.TOKEN_WORD, lqtok.TOKEN_IDENTSTRING, lqtok.TOKEN_IDENTINDEX, lqtok.TOKEN_RBRACKET,
    lqtok.TOKEN_RPAREN, lqtok.TOKEN_STRING, lqtok.TOKEN_INTEGER, lqtok.TOKEN_FLOAT,
    lqtok.TOKEN_TRUE, lqtok.TOKEN_FALSE, lqtok.TOKEN_NIL, lqtok.TOKEN_NULL, lqtok.TOKEN_EMPTY,
    lqtok.TOKEN_BLANK, lqtok.TOKEN_CONTINUE,
}
_TOKENIZE = lqexpr.tokenize  # python-liquid's own, wrapped by `install`


def contextual_keywords(tokens: Iterator[lqtok.Token]) -> Iterator[lqtok.Token]:
    """`tokens` with each keyword of `NAMES` that stands where a keyword cannot made a name."""
    previous: str | None = None
    for token in tokens:
        if token.kind in NAMES and (previous is None or previous not in _OPERAND_ENDS):
            token = lqtok.Token(lqtok.TOKEN_WORD, token.value, token.start_index, token.source)
        previous = token.kind
        yield token


def tokenize(source: str, parent_token: lqtok.Token) -> Iterator[lqtok.Token]:
    """python-liquid's expression tokenizer, keywords read in context (`contextual_keywords`)."""
    return contextual_keywords(_TOKENIZE(source, parent_token))


def install() -> None:
    """Make the tag expressions python-liquid tokenizes read keywords in context.

    python-liquid's tags tokenize their expressions through `TokenStream.into_inner`, which
    calls the tokenizer of the `liquid.stream` module; that is the one replaced (the output
    tag, `tags.OutputTag`, calls `tokenize` itself). Idempotent.
    """
    lqstream.tokenize = tokenize  # type: ignore[attr-defined]


# --- blank ---------------------------------------------------------------------------------


def is_blank(value: object) -> bool:
    """Rails' `blank?`: nil, false, missing, whitespace-only text, an empty array or hash."""
    if value is None or value is False or isinstance(value, (liquid.Undefined, primitive.Blank)):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        return not value
    return False


class _BlankEq(logical.EqExpression):
    """`x == blank` (either way round), with Rails' meaning of blank."""

    __slots__ = ()

    def _other(self) -> lqexpression.Expression:
        return self.right if isinstance(self.left, primitive.Blank) else self.left

    def evaluate(self, context: liquid.RenderContext) -> object:
        return is_blank(self._other().evaluate(context))

    async def evaluate_async(self, context: liquid.RenderContext) -> object:
        return is_blank(await self._other().evaluate_async(context))


class _BlankNe(_BlankEq):
    """`x != blank` (either way round)."""

    __slots__ = ()

    def evaluate(self, context: liquid.RenderContext) -> object:
        return not super().evaluate(context)

    async def evaluate_async(self, context: liquid.RenderContext) -> object:
        return not await super().evaluate_async(context)


class _BlankWhen(case_tag._AnyExpression):
    """`{% when … %}` alternatives of a `case`, `blank` among them with Rails' meaning."""

    __slots__ = ()

    def evaluate(self, context: liquid.RenderContext) -> list[bool]:
        left = self.left.evaluate(context)
        return [is_blank(left) if isinstance(right, primitive.Blank)
                else logical._eq(left, right.evaluate(context)) for right in self.expressions]

    async def evaluate_async(self, context: liquid.RenderContext) -> list[bool]:
        left = await self.left.evaluate_async(context)
        return [is_blank(left) if isinstance(right, primitive.Blank)
                else logical._eq(left, await right.evaluate_async(context))
                for right in self.expressions]


_BLANK_CLASSES: dict[type, type] = {logical.EqExpression: _BlankEq,
                                     logical.NeExpression: _BlankNe}


def mechanic_comparisons(nodes: list[lqast.Node]) -> None:
    """Give every `== blank` / `!= blank` comparison and `{% when blank %}` in `nodes` (at any
    depth, in any tag) Rails' meaning of blank. Changes the parsed nodes in place; run once per compile."""
    for obj in tree.walk(nodes):
        if isinstance(obj, (logical.EqExpression, logical.NeExpression)) and any(
                isinstance(side, primitive.Blank) for side in (obj.left, obj.right)):
            obj.__class__ = _BLANK_CLASSES[type(obj)]
        elif type(obj) is case_tag._AnyExpression and any(
                isinstance(right, primitive.Blank) for right in obj.expressions):
            obj.__class__ = _BlankWhen


# --- nil and false as text -----------------------------------------------------------------


def ruby_text(value: Any) -> Any:
    """nil as `""`, true/false as `"true"`/`"false"` (Ruby's `to_s`); anything else as is."""
    if value is None or isinstance(value, liquid.Undefined):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def ruby_output(value: Any, autoescape: bool) -> str:
    """What `{{ value }}` writes, as Ruby Liquid does: an array's items one after the other
    (recursively), a plain hash in its inspect form, anything else as python-liquid writes it."""
    if isinstance(value, (list, tuple)) and type(value).__str__ in (list.__str__, tuple.__str__):
        return "".join(ruby_output(item, autoescape) for item in value)
    if isinstance(value, dict) and type(value).__str__ is dict.__str__:
        return stringify.to_liquid_string(data.inspect(value), autoescape)
    return stringify.to_liquid_string(value, autoescape)


#: Liquid's filters that take text: nil and false in their input or arguments are text as in
#: Ruby (`"a" | append: nil` is `a`, `append: false` is `afalse`); `join` joins them so too.
TEXT_FILTERS = frozenset({
    "append", "prepend", "capitalize", "downcase", "upcase", "escape", "escape_once", "lstrip",
    "rstrip", "strip", "strip_html", "strip_newlines", "remove", "remove_first", "remove_last",
    "replace_first", "replace_last", "truncate", "truncatewords", "url_encode", "url_decode",
    "join",
})


def ruby_arguments(name: str, left: Any, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """The input and arguments of text filter `name` (`TEXT_FILTERS`) as Ruby would see them."""
    if name == "join":
        items = [ruby_text(item) for item in left] if isinstance(left, (list, tuple)) else left
        return items, tuple(map(ruby_text, args))
    return _ruby_string(left), tuple(map(_ruby_string, args))


def _ruby_string(value: Any) -> Any:
    """A text filter's input or argument as Ruby Liquid's `Utils.to_s` makes it: `ruby_text`,
    and a plain array or hash in its inspect form (`["a", nil]`), never Python's `repr`."""
    if type(value) in (list, tuple, dict):
        return data.inspect(value)
    return ruby_text(value)


# --- messages in Liquid's words ------------------------------------------------------------

_KINDS = {"str": "a string", "list": "an array", "tuple": "an array", "dict": "a hash",
          "int": "a number", "float": "a number", "Decimal": "a number", "bool": "a boolean",
          "NoneType": "nil", "Undefined": "nil", "range": "a range"}
_PYTHON = re.compile(
    r"(?:\w+\(\) )?takes (?:from (\d+) to )?(\d+) positional arguments? but (\d+) (?:was|were) given"
    r"|(?:\w+\(\) )?missing \d+ required (?:positional|keyword-only) arguments?: .*"
    r"|(?:\w+\(\) )?got an unexpected keyword argument '(\w+)'"
    r"|(?:\w+\(\) )?got multiple values for argument '(\w+)'"
    r"|Undefined\(([^)]*)\)"
    r"|'(" + "|".join(_KINDS) + r")'|(?<=found )(" + "|".join(_KINDS) + r")\b"
    r"|\b(None|True|False)\b")


def _arguments(low: str | None, high: str, given: str) -> str:
    # Python counts the piped value as the first argument; Liquid does not
    wanted = f"{int(low) - 1} to {int(high) - 1}" if low else str(int(high) - 1)
    return f"takes {wanted} argument{'' if wanted == '1' else 's'}, got {int(given) - 1}"


def _term(found: re.Match[str]) -> str:
    low, high, given, unknown, twice, undefined, quoted, bare, constant = found.groups()
    text = found.group(0)
    if high:
        return _arguments(low, high, given)
    if "required" in text:
        return "missing an argument"
    if unknown:
        return f"unknown option {unknown!r}"
    if twice:
        return f"the argument {twice!r} is given twice"
    if undefined is not None:
        return "nil"
    if quoted or bare:
        return _KINDS[quoted or bare]
    return {"None": "nil", "True": "true", "False": "false"}[constant]


def liquid_terms(message: str) -> str:
    """`message` in Liquid's words: `None` is nil, `'str'` a string, `Undefined(x)` nil, and a
    Python signature error (`append() takes 2 positional arguments but 3 were given`) says
    what Liquid's arguments were (`takes 1 argument, got 2`)."""
    return _PYTHON.sub(_term, message)
