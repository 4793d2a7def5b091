"""Mechanic's documented examples through the real renderer (data: tests/mechanic_examples/).

Each example with a literal output in Mechanic's documentation renders here and must give the
documented output; examples that cannot run here say why in the data (`skip`) and are reported
as skipped. `test_conformance_count` prints the count of matches: the measure of compatibility
quoted in docs/compatibility.md.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from runnerd import errors
from runnerd.liquid import render

DATA = pathlib.Path(__file__).parent / "mechanic_examples" / "examples.yaml"
#: Every scalar read as a string (the outputs are text: `2024-02-29` is not a date here).
EXAMPLES: list[dict[str, Any]] = yaml.load(DATA.read_text(encoding="utf-8"),
                                          Loader=yaml.BaseLoader)
DEFAULT_ZONE = "America/Chicago"
DEFAULT_NOW = 1_700_000_000.0


def lines(text: str) -> list[str]:
    """The comparison: blank lines dropped, each line stripped at both ends."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def objects(result: render.RenderResult) -> dict[str, list[Any]]:
    """The objects a render collected, by kind, each kind in render order."""
    actions = []
    for spec in result.actions:
        action: dict[str, Any] = {"type": spec.type, "options": spec.options}
        if spec.meta is not None:
            action["meta"] = spec.meta
        actions.append(action)
    return {"action": actions, "log": list(result.logs), "error": list(result.errors)}


def expected_objects(text: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {"action": [], "log": [], "error": []}
    for line in lines(text):
        ((kind, value),) = json.loads(line).items()
        found[kind].append(value)
    return found


def outcome(example: dict[str, Any]) -> tuple[Any, Any]:
    """(what runnerd renders, what the page documents) for one example."""
    renderer = render.Renderer(timezone=example.get("timezone", DEFAULT_ZONE),
                               clock=lambda: float(example.get("now", DEFAULT_NOW)))
    source, name = example["template"], example["name"]
    try:
        if example.get("objects") == "true":
            got: Any = objects(renderer.render(renderer.compile(source, name=name), {}))
            return got, expected_objects(example["expected"])
        return lines(renderer.render_text(source, {}, name=name)), lines(example["expected"])
    except (errors.ConfigError, errors.RenderError) as exc:
        return f"error: {exc}", example["expected"]


def match(pair: tuple[Any, Any]) -> bool:
    return bool(pair[0] == pair[1])


def test_examples_are_well_formed() -> None:
    names = [example["name"] for example in EXAMPLES]
    assert len(names) == len(set(names)), "example names must be unique"
    for example in EXAMPLES:
        assert {"page", "name", "template", "expected"} <= example.keys(), example.get("name")
        assert example["page"].endswith(".md"), example["name"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["name"] for e in EXAMPLES])
def test_documented_example(example: dict[str, Any]) -> None:
    if "skip" in example:
        pytest.skip(f"{example['page']}: {example['skip']}")
    got, expected = outcome(example)
    assert got == expected, f"{example['page']} ({example['name']})"


def test_conformance_count(capsys: pytest.CaptureFixture[str]) -> None:
    runnable = [example for example in EXAMPLES if "skip" not in example]
    matched = [example["name"] for example in runnable if match(outcome(example))]
    with capsys.disabled():
        print(f"\nMechanic documentation examples: {len(matched)} of {len(runnable)} match "
              f"({len(EXAMPLES) - len(runnable)} skipped, need Shopify or are random)")
    assert len(matched) == len(runnable)
