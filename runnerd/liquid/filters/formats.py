"""`parse_xml` (Rails' `Hash.from_xml`) and `graphql_arguments` (pure functions).

XML is read with the standard library's expat parser; a document type declaration is refused
(no entities, so no entity-expansion bomb), and the document is capped at `MAX_XML` characters.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Mapping
from typing import Any

from runnerd.liquid.filters import data

MAX_XML = 1_000_000
_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")


class _Element:
    __slots__ = ("attributes", "children", "text")

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.children: list[tuple[str, Any]] = []
        self.text: list[str] = []

    def value(self) -> Any:
        """Rails' reading: text alone is a string (nil when blank); attributes and children a
        hash (a name repeated gives an array), text beside them under `__content__`."""
        text = "".join(self.text)
        if not self.children and not self.attributes:
            return text if text.strip() else None
        out: dict[str, Any] = dict(self.attributes)
        counts = collections.Counter(name for name, _ in self.children)
        for name, value in self.children:
            if counts[name] == 1:
                out[name] = value
            elif isinstance(out.get(name), list):
                out[name].append(value)
            else:
                out[name] = [value]
        if text.strip():
            out["__content__"] = text
        return out


def _refuse(*_: Any) -> None:
    raise ValueError("a document type declaration is not allowed")


def parse_xml(value: Any) -> Any:
    """`parse_xml`: XML text as a hash, as Rails' `Hash.from_xml` reads it
    (`<foo><bar>baz</bar><bar><qux>quux</qux></bar></foo>` is
    `{"foo": {"bar": ["baz", {"qux": "quux"}]}}`)."""
    if not isinstance(value, str):
        raise ValueError(f"expected XML text, got {data.kind(value)}")
    if len(value) > MAX_XML:
        raise ValueError(f"XML longer than {MAX_XML} characters")
    from xml.parsers import expat  # noqa: PLC0415 - imported on first use: idle RSS

    stack: list[_Element] = [_Element({})]
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse

    def start(name: str, attributes: dict[str, str]) -> None:
        stack.append(_Element(attributes))

    def end(name: str) -> None:
        element = stack.pop()
        stack[-1].children.append((name, element.value()))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda text: stack[-1].text.append(text)
    try:
        parser.Parse(value.strip(), True)
    except expat.ExpatError as exc:
        raise ValueError(f"invalid XML: {expat.ErrorString(exc.code)} (line {exc.lineno})"
                         ) from None
    return dict(stack[0].children)


def _graphql(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{ " + _pairs(value) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_graphql(item) for item in value) + "]"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(data.plain(value), ensure_ascii=False)


def _pairs(value: Mapping[Any, Any]) -> str:
    parts = []
    for key, item in value.items():
        if not isinstance(key, str) or not _NAME.match(key):
            raise ValueError(f"{key!r} is not a GraphQL argument name")
        parts.append(f"{key}: {_graphql(item)}")
    return ", ".join(parts)


def graphql_arguments(value: Any) -> str:
    """`graphql_arguments`: a hash as GraphQL arguments (`a: "text", b: { id: 1 }, c: [1, 2]`):
    strings quoted as JSON, numbers, booleans and null as they are, hashes as input objects
    and arrays as lists."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a hash, got {data.kind(value)}")
    return _pairs(value)
