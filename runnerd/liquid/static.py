"""What a parsed task template uses, found without rendering it (`tree.walk`): its filters
and the action types it names literally (`{% action "http" %}`), each with its line."""

from __future__ import annotations

from collections.abc import Iterable

from liquid.builtin import expressions as lqexpr

from runnerd.liquid import tags
from runnerd.liquid.tree import line, walk


def filters(nodes: Iterable[object]) -> list[tuple[str, int | None]]:
    """The filters used, by name, with their lines."""
    return [(obj.name, line(obj.token)) for obj in walk(nodes)
            if isinstance(obj, lqexpr.Filter)]


def action_types(nodes: Iterable[object]) -> list[tuple[str, int | None]]:
    """The action types named by a literal string in an `action` tag, with their lines."""
    found = []
    for obj in walk(nodes):
        if isinstance(obj, tags.ObjectNode) and obj.kind == "action" and isinstance(
                obj.type, lqexpr.StringLiteral):
            found.append((obj.type.value, line(obj.token)))
    return found
