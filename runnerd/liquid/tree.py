"""A parse tree walked without rendering it.

`walk` visits every node and expression of a parse tree, inside any tag (runnerd's own
`action`, `log`, `error` and `assign` included), by their attributes: it needs no help from
the tags, so a tag added later is walked too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from liquid import ast as lqast
from liquid import expression as lqexpression
from liquid import token as lqtok
from liquid.builtin import expressions as lqexpr

#: The parts of a parse tree `walk` descends into.
_PARTS = (lqast.Node, lqexpression.Expression, lqexpr.Filter, lqexpr.KeywordArgument,
          lqexpr.PositionalArgument)


def _attributes(obj: object) -> Iterator[object]:
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if not name.startswith("__"):
                yield getattr(obj, name, None)
    yield from getattr(obj, "__dict__", {}).values()


def walk(nodes: Iterable[object]) -> Iterator[object]:
    """Every node, expression, filter and argument reachable from `nodes`, each once."""
    stack: list[object] = list(nodes)
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            stack.extend(reversed(obj))
            continue
        if isinstance(obj, _PARTS):
            yield obj
            stack.extend(_attributes(obj))


def line(token: lqtok.Token | None) -> int | None:
    """The line of the template `token` starts on (None when it has no position)."""
    if token is None or token.start_index < 0:
        return None
    return token.source.count("\n", 0, token.start_index) + 1
