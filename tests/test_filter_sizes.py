"""Filters whose result can outgrow their input are refused before they build it: the render
fails with the `output_bytes` limit naming the filter, and memory stays near the cap."""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest

from runnerd import config, errors
from runnerd.liquid import render
from runnerd.liquid.filters import sizes

CAP = 65_536
#: The test renderer's own allocations (compile, context, the error) stay well under this; an
#: unguarded filter in the cases below builds at least 1 MiB.
MEMORY = 512 * 1024


@pytest.fixture(scope="module")
def renderer() -> render.Renderer:
    return render.Renderer(limits=config.Limits(output_bytes=CAP, render_seconds=30.0))


def attempt(renderer: render.Renderer, source: str, **variables: Any) -> tuple[str, int]:
    """Render `source`: the error message (or "ok") and the peak memory it allocated."""
    template = renderer.compile(source, name="t")
    tracemalloc.start()
    try:
        renderer.render(template, variables)
        message = "ok"
    except errors.RenderError as exc:
        message = exc.message
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return message, peak


def nested(levels: int, width: int) -> list[Any]:
    """An array holding `width` references to one array, `levels` deep (tiny in memory)."""
    value: list[Any] = ["x"]
    for _ in range(levels):
        value = [value] * width
    return value


def doubling(times: int) -> list[Any]:
    """What `{% assign a = a | push: a %}` makes in a loop: each step prints twice as long."""
    value: list[Any] = ["x"]
    for _ in range(times):
        value = [*value, value]
    return value


K = "x" * 1024
#: (filter, template, variables): each result would be well over CAP (1 MiB or more).
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("replace", '{% assign t = s | replace: "x", r %}', {"s": K, "r": K}),
    ("replace", '{% assign t = s | replace: "", r %}', {"s": K, "r": K}),
    ("replace", "{% assign t = s | replace: newline, r %}", {"s": "\n" * 1024, "r": K}),
    ("replace_first", '{% assign t = s | replace_first: "x", r | replace_first: "x", r %}',
     {"s": K * 40, "r": K * 40}),
    ("replace_last", '{% assign t = s | replace_last: "x", r %}', {"s": K * 40, "r": K * 40}),
    ("append", "{% assign t = s | append: s %}", {"s": K * 40}),
    ("prepend", "{% assign t = s | prepend: s %}", {"s": K * 40}),
    ("newline_to_br", "{% assign t = s | newline_to_br %}", {"s": "\n" * 20_000}),
    ("escape", "{% assign t = s | escape %}", {"s": "&" * 20_000}),
    ("escape_once", "{% assign t = s | escape_once %}", {"s": '"' * 20_000}),
    ("escapejs", "{% assign t = s | escapejs %}", {"s": "<" * 20_000}),
    ("url_encode", "{% assign t = s | url_encode %}", {"s": "é" * 20_000}),
    ("base64_encode", "{% assign t = s | base64_encode | base64_encode %}", {"s": K * 50}),
    ("base64_url_safe_encode", "{% assign t = s | base64_url_safe_encode %}", {"s": K * 60}),
    ("json", "{% assign t = s | json | json | json %}", {"s": '"' * 20_000}),
    ("json", "{% assign t = a | json %}", {"a": doubling(18)}),
    ("jsonl", "{% assign t = a | jsonl %}", {"a": doubling(18)}),
    ("csv", "{% assign t = a | csv %}", {"a": [['"' * 40_000]]}),
    ("join", "{% assign t = a | join: s %}", {"a": list(K), "s": K}),
    ("join", "{% assign t = a | join %}", {"a": nested(5, 20)}),
    ("concat", "{% assign t = a | concat: a %}", {"a": list(K * 40)}),
    ("push", '{% assign t = a | push: "y" %}', {"a": list(K * 64)}),
    ("map", '{% assign t = a | map: "x" %}', {"a": nested(5, 20)}),
    ("uniq", "{% assign t = a | uniq %}", {"a": nested(5, 20)}),
    ("times", "{% assign t = n | times: n %}", {"n": 1 << 300_000}),
    ("date", '{% assign t = "now" | date: "%9999999Y" %}', {}),
    ("date", '{% assign t = "now" | date: "%99999999999999999999999Y" %}', {}),
    ("scan", "{% assign t = s | scan: p %}", {"s": K * 10, "p": "(" * 20 + "x" + ")" * 20}),
]


@pytest.mark.parametrize(("name", "source", "variables"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_growing_filter_is_refused_before_it_builds(renderer: render.Renderer, name: str,
                                                      source: str, variables: Any) -> None:
    message, peak = attempt(renderer, source, **variables)
    assert message == f"line 1: filter {name!r}: limit exceeded: output_bytes ({CAP})"
    assert peak < MEMORY, f"{peak} bytes allocated"


def test_results_up_to_the_cap_are_built() -> None:
    r = render.Renderer(limits=config.Limits(output_bytes=1000))
    fits = r.render_text('{{ s | replace: "x", "yy" }}', {"s": "x" * 500}, name="t")
    assert fits == "y" * 1000
    with pytest.raises(errors.RenderError, match="filter 'replace': limit exceeded"):
        r.render_text('{{ s | replace: "x", "yy" }}', {"s": "x" * 501}, name="t")
    assert r.render_text('{{ "2024-01-02" | date: "%900Y" }}', {}, name="t") == "2024".rjust(
        900, "0")
    assert r.render_text('{{ a | join: "--" }}', {"a": ["x" * 332] * 3}, name="t") == (
        "--".join(["x" * 332] * 3))
    with pytest.raises(errors.RenderError, match="filter 'join': limit exceeded"):
        r.render_text('{{ a | join: "---" }}', {"a": ["x" * 332] * 3}, name="t")


def gzip_bomb(size: int) -> str:
    """Base64 of gzip data that inflates to `size` zero bytes (a few KB per 10 MiB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    packed = b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()
    return base64.b64encode(packed).decode()


def test_a_gzip_bomb_stops_at_the_cap(renderer: render.Renderer) -> None:
    bomb = gzip_bomb(64 << 20)
    assert len(bomb) < 100_000
    message, peak = attempt(renderer, "{% assign t = b | gunzip %}", b=bomb)
    assert message == f"line 1: filter 'gunzip': limit exceeded: output_bytes ({CAP})"
    assert peak < 2 * CAP + len(bomb) + 256 * 1024, f"{peak} bytes allocated"


def test_gunzip_reads_members_up_to_the_cap(renderer: render.Renderer) -> None:
    two = base64.b64encode(gzip.compress(b"ab") + gzip.compress(b"cd")).decode()
    assert renderer.render_text("{{ b | gunzip }}", {"b": two}, name="t") == "abcd"
    exact = base64.b64encode(gzip.compress(b"z" * CAP)).decode()
    assert renderer.render_text("{{ b | gunzip | size }}", {"b": exact}, name="t") == str(CAP)
    cut = base64.b64encode(gzip.compress(b"hello" * 100)[:-12]).decode()
    with pytest.raises(errors.RenderError, match="filter 'gunzip': not gzip data"):
        renderer.render_text("{{ b | gunzip }}", {"b": cut}, name="t")


@pytest.mark.parametrize("source", [
    "{{ a }}", "{% log a %}", '{% action "echo", a %}', "{% error a %}",
    '{% action "echo", items: a %}',
])
def test_shared_nested_data_is_measured_before_it_is_copied(renderer: render.Renderer,
                                                            source: str) -> None:
    message, peak = attempt(renderer, source, a=doubling(18))
    assert message == f"line 1: limit exceeded: output_bytes ({CAP})"
    assert peak < MEMORY, f"{peak} bytes allocated"


def test_data_size_bounds_json_and_stops_past_the_cap() -> None:
    value = {"a": [1, 2.5, None, True, "q\"\\\n"], "b": {"c": "é"}, 3: "d"}
    assert sizes.data(10_000, value) >= len(json.dumps(value, separators=(",", ":"),
                                                       ensure_ascii=False))
    assert sizes.data(100, doubling(60)) <= 200
