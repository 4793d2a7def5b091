"""The task renderer: Mechanic's tags, keywords, extended assign, break, limits and errors."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from runnerd import config, errors, models
from runnerd.liquid import render

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.fixture(scope="module")
def renderer() -> render.Renderer:
    return render.Renderer(timezone="UTC", clock=lambda: NOW)


def variables(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event": {"topic": "user/test/run", "data": {"name": "Ada", "items": [1, 2, 3],
                                                      "nested": {"a": {"b": 1}}}},
        "task": {"id": "t-1", "name": "demo"},
        "options": {"greeting": "hi"},
        "cache": {},
    }
    base.update(extra)
    return base


def run(renderer: render.Renderer, source: str, **extra: Any) -> render.RenderResult:
    return renderer.render(renderer.compile(source, name="demo"), variables(**extra))


def actions(renderer: render.Renderer, source: str, **extra: Any) -> list[models.ActionSpec]:
    return run(renderer, source, **extra).actions


def render_error(renderer: render.Renderer, source: str, **extra: Any) -> str:
    template = renderer.compile(source, name="demo")
    with pytest.raises(errors.RenderError) as caught:
        renderer.render(template, variables(**extra))
    message = caught.value.message
    assert "\n" not in message
    return message


def syntax_error(renderer: render.Renderer, source: str) -> str:
    with pytest.raises(errors.ConfigError) as caught:
        renderer.compile(source, name="demo")
    message = caught.value.message
    assert "\n" not in message
    return message


# --- action: every form -----------------------------------------------------------------------


def test_action_block_with_full_json(renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% action %}{"type": "http", "options": {"url": "u"}, '
                               '"meta": {"m": 1}}{% endaction %}')
    assert spec == models.ActionSpec("http", {"url": "u"}, {"m": 1}, True)


def test_action_block_with_type(renderer: render.Renderer) -> None:
    source = """
    {% action "http" %}
      {"method": "post", "url": {{ "https://x.test/" | append: event.data.name | json }}}
    {% endaction %}"""
    [spec] = actions(renderer, source)
    assert spec.type == "http"
    assert spec.options == {"method": "post", "url": "https://x.test/Ada"}
    assert spec.meta is None and spec.perform_event is True


def test_action_block_with_empty_body_has_nil_options(renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% action "echo" %}  {% endaction %}')
    assert spec.options is None


def test_action_positional(renderer: render.Renderer) -> None:
    specs = actions(renderer, '{% action "cache", "set", "foo", "bar" %}'
                              '{% action "cache", "setex", "k", 600, event.data.name %}')
    assert [s.options for s in specs] == [["set", "foo", "bar"], ["setex", "k", 600, "Ada"]]


def test_action_mapped(renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% action "echo", foo: "bar", baz: 1, n: nil, t: true %}')
    assert spec.options == {"foo": "bar", "baz": 1, "n": None, "t": True}


def test_action_single_value(renderer: render.Renderer) -> None:
    specs = actions(renderer, '{% action "echo", "foo" %}{% action "email", event.data %}')
    assert specs[0].options == "foo"
    assert specs[1].options == variables()["event"]["data"]


def test_action_without_comma(renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% assign csv = "a,b" %}{% action "echo" csv %}')
    assert spec.options == "a,b"


def test_action_options_and_meta_named_and_positional(renderer: render.Renderer) -> None:
    source = ('{% assign opts = hash %}{% assign opts["url"] = "u" %}'
              '{% assign meta = hash %}{% assign meta["k"] = 2 %}'
              '{% action "http", options: opts, meta: meta %}{% action "http", opts, meta %}')
    specs = actions(renderer, source)
    assert [(s.options, s.meta) for s in specs] == [({"url": "u"}, {"k": 2})] * 2


def test_action_type_and_options_from_variables(renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% assign t = "echo" %}{% action t, event.data.items %}')
    assert (spec.type, spec.options) == ("echo", [1, 2, 3])


def test_action_values_may_be_filtered(renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% action "echo", name: event.data.name | upcase, n: 1 %}')
    assert spec.options == {"name": "ADA", "n": 1}


@pytest.mark.parametrize("source", [
    '{% action "echo", foo: 1, __perform_event: false %}',
    '{% action "echo" %}{"foo": 1, "__perform_event": false}{% endaction %}',
    '{% action %}{"type": "echo", "options": {"foo": 1, "__perform_event": false}}{% endaction %}',
    '{% action "echo", __perform_event: false %}{"foo": 1}{% endaction %}',
])
def test_perform_event_false_in_every_form(renderer: render.Renderer, source: str) -> None:
    [spec] = actions(renderer, source)
    assert spec.options == {"foo": 1}
    assert spec.perform_event is False


@pytest.mark.parametrize("source", [
    '{% action "echo", foo: 1, __meta: event.data.items %}',
    '{% action "echo" %}{"foo": 1, "__meta": [1, 2, 3]}{% endaction %}',
    '{% action "echo", __meta: event.data.items %}{"foo": 1}{% endaction %}',
])
def test_meta_control_param_moves_into_meta(renderer: render.Renderer, source: str) -> None:
    [spec] = actions(renderer, source)
    assert (spec.options, spec.meta) == ({"foo": 1}, [1, 2, 3])


def test_positional_action_with_control_params(renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% action "cache", "del", "k", __perform_event: false %}')
    assert (spec.options, spec.perform_event) == (["del", "k"], False)


def test_inline_action_with_only_control_params_has_empty_options(
        renderer: render.Renderer) -> None:
    [spec] = actions(renderer, '{% action "echo", __perform_event: false %}{% log 1 %}')
    assert (spec.options, spec.perform_event) == ({}, False)


def test_action_in_liquid_tag(renderer: render.Renderer) -> None:
    source = """{% liquid
      assign to = "a@example.test"
      action "email"
        echo '{"to": '
        echo to | json
        echo '}'
      endaction
      action "cache", "incr", "n"
    %}"""
    specs = actions(renderer, source)
    assert [(s.type, s.options) for s in specs] == [
        ("email", {"to": "a@example.test"}), ("cache", ["incr", "n"])]


def test_actions_logs_and_errors_in_render_order(renderer: render.Renderer) -> None:
    source = """static text is ignored {{ "so is output" }}
    {% for i in (1..3) %}{% action "echo", i: i %}{% log i %}{% endfor %}
    {% error "first" %}{% action "echo", "after error" %}{% error message: "second" %}"""
    result = run(renderer, source)
    assert [a.options for a in result.actions] == [{"i": 1}, {"i": 2}, {"i": 3}, "after error"]
    assert result.logs == [1, 2, 3]
    assert result.errors == ["first", {"message": "second"}]


def test_collected_values_are_plain_copies(renderer: render.Renderer) -> None:
    data = {"list": [1, 2]}
    source = ('{% action "echo", event.data %}{% log event.data %}'
              '{% assign x = event.data.missing %}{% action "echo", x: x, r: (1..3) %}')
    result = run(renderer, source, event={"data": data})
    assert result.actions[0].options == {"list": [1, 2]}
    assert result.actions[0].options is not data
    assert result.actions[0].options["list"] is not data["list"]
    assert result.actions[1].options == {"x": None, "r": [1, 2, 3]}


def test_invalid_json_in_action_block(renderer: render.Renderer) -> None:
    message = render_error(renderer, '\n\n{% action "http" %}{"url": }{% endaction %}')
    assert message.startswith("line 3: action: the block is not valid JSON")


@pytest.mark.parametrize("source", [
    '{% action %}[1, 2]{% endaction %}',
    '{% action %}{"options": {}}{% endaction %}',
    '{% action nothing, "x" %}',
    '{% action 5, "x" %}',
])
def test_action_without_a_valid_type(renderer: render.Renderer, source: str) -> None:
    assert "action:" in render_error(renderer, source)


def test_action_syntax_errors(renderer: render.Renderer) -> None:
    assert "mix" not in syntax_error(renderer, '{% action "echo" %}no end')
    assert "positional" in syntax_error(renderer, '{% action "echo", "a", b: 1 %}')
    assert "type first" in syntax_error(renderer, '{% action foo: 1 %}')


# --- log and error ------------------------------------------------------------------------------


def test_log_forms(renderer: render.Renderer) -> None:
    source = ('{% log "x" %}{% log %}{"a": [1, {{ event.data.items | json }}]}{% endlog %}'
              '{% log message: "m", details: event.data.nested %}{% log "a", "b" %}')
    assert run(renderer, source).logs == [
        "x", {"a": [1, [1, 2, 3]]}, {"message": "m", "details": {"a": {"b": 1}}}, ["a", "b"]]


def test_error_forms_do_not_halt(renderer: render.Renderer) -> None:
    source = ('{% error "x" %}{% error %}{"code": 1}{% enderror %}'
              '{% error message: "m" %}{% log "still rendering" %}')
    result = run(renderer, source)
    assert result.errors == ["x", {"code": 1}, {"message": "m"}]
    assert result.logs == ["still rendering"]


def test_log_block_with_invalid_json(renderer: render.Renderer) -> None:
    assert render_error(renderer, "{% log %}oops{% endlog %}").startswith(
        "line 1: log: the block is not valid JSON")


def test_log_mixing_forms_is_a_syntax_error(renderer: render.Renderer) -> None:
    assert "either" in syntax_error(renderer, '{% log "a", b: 1 %}')


# --- environment -----------------------------------------------------------------------------


def test_keywords(renderer: render.Renderer) -> None:
    source = ('{% assign parts = "a\nb\r\nc" | split: newline %}{% log parts %}'
              '{% log array.size %}{% log hash.size %}{% log newline %}')
    assert run(renderer, source).logs == [["a", "b", "c"], 0, 0, "\n"]


def test_keywords_are_fresh_each_render(renderer: render.Renderer) -> None:
    template = renderer.compile('{% assign a = array %}{% assign a[0] = 1 %}{% log array %}',
                                name="demo")
    for _ in range(2):
        assert renderer.render(template, variables()).logs == [[]]


def test_undefined_is_lax(renderer: render.Renderer) -> None:
    source = ('{{ nope.deeper[0] }}{% if nope %}{% log "yes" %}{% endif %}'
              '{% log nope %}{% log event.data.nope %}{% log cache["absent"] %}')
    assert run(renderer, source).logs == [None, None, None]


def test_cache_mapping_absent_key_is_nil(renderer: render.Renderer) -> None:
    class View(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            if key == "hit":
                return {"n": 1}
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            return iter(["hit"])

        def __len__(self) -> int:
            return 1

    result = run(renderer, '{% log cache["hit"].n %}{% log cache.miss %}', cache=View())
    assert result.logs == [1, None]


def test_variables_may_be_reassigned(renderer: render.Renderer) -> None:
    source = '{% assign event = hash %}{% assign event["topic"] = "stub" %}{% log event.topic %}'
    assert run(renderer, source).logs == ["stub"]


def test_include_and_render_tags_are_not_available(renderer: render.Renderer) -> None:
    assert "include" in syntax_error(renderer, '{% include "x" %}')


# --- extended assign -------------------------------------------------------------------------


def test_assign_hash_key_and_array_append(renderer: render.Renderer) -> None:
    source = """{% assign h = hash %}{% assign h["a"] = 1 %}{% assign h.b = 2 %}
    {% assign a = array %}{% for i in (1..4) %}{% assign a[a.size] = i | times: 10 %}{% endfor %}
    {% assign a[0] = "first" %}{% assign a[-1] = "last" %}{% log h %}{% log a %}"""
    assert run(renderer, source).logs == [{"a": 1, "b": 2}, ["first", 20, 30, "last"]]


def test_assign_nested_paths(renderer: render.Renderer) -> None:
    source = """{% assign h = hash %}{% assign h["a"]["b"] = 1 %}{% assign h["a"]["c"] = 2 %}
    {% assign k = "list" %}{% assign h[k][0] = "x" %}{% assign fresh["x"]["y"] = 3 %}
    {% log h %}{% log fresh %}"""
    assert run(renderer, source).logs == [
        {"a": {"b": 1, "c": 2}, "list": ["x"]}, {"x": {"y": 3}}]


def test_assign_is_by_value(renderer: render.Renderer) -> None:
    source = """{% assign a = hash %}{% assign a["x"] = 1 %}{% assign b = a %}
    {% assign a["x"] = 2 %}{% assign rows = array %}{% assign row = hash %}
    {% for i in (1..2) %}{% assign row["i"] = i %}{% assign rows[rows.size] = row %}{% endfor %}
    {% for r in rows %}{% assign r["seen"] = true %}{% endfor %}
    {% log a.x %}{% log b.x %}{% log rows %}"""
    assert run(renderer, source).logs == [2, 1, [{"i": 1}, {"i": 2}]]


def test_assign_never_changes_the_input(renderer: render.Renderer) -> None:
    event = {"data": {"list": [1], "h": {"k": "v"}}}
    source = ('{% assign event.data.list[1] = 2 %}{% assign d = event.data %}'
              '{% assign d["h"]["k"] = "changed" %}{% log d %}')
    result = run(renderer, source, event=event)
    assert event == {"data": {"list": [1], "h": {"k": "v"}}}
    assert result.logs == [{"list": [1, 2], "h": {"k": "changed"}}]


def test_assign_pads_arrays_with_nil(renderer: render.Renderer) -> None:
    assert run(renderer, '{% assign a[2] = "x" %}{% log a %}').logs == [[None, None, "x"]]


@pytest.mark.parametrize(("source", "why"), [
    ('{% assign s = "text" %}{% assign s["k"] = 1 %}', "cannot set"),
    ('{% assign a = array | push: 1 %}{% assign a["k"] = 1 %}', "must be an integer"),
    ('{% assign h = hash %}{% assign h[nope] = 1 %}', "the key is nil"),
    ('{% assign a = array %}{% assign a[-5] = 1 %}', "out of range"),
    ('{% assign a = array %}{% assign a[100000000] = 1 %}', "out of range"),
])
def test_assign_errors(renderer: render.Renderer, source: str, why: str) -> None:
    assert why in render_error(renderer, source)


# --- break -----------------------------------------------------------------------------------


def test_break_at_top_level_ends_the_render(renderer: render.Renderer) -> None:
    source = """{% action "echo", 1 %}{% if true %}{% log "before" %}{% break %}{% endif %}
    {% action "echo", 2 %}{% log "after" %}"""
    result = run(renderer, source)
    assert [a.options for a in result.actions] == [1]
    assert result.logs == ["before"]


def test_continue_at_top_level_ends_the_render(renderer: render.Renderer) -> None:
    assert run(renderer, '{% log 1 %}{% continue %}{% log 2 %}').logs == [1]


def test_break_in_liquid_tag_and_inside_loops(renderer: render.Renderer) -> None:
    source = """{% for i in (1..5) %}{% if i == 3 %}{% break %}{% endif %}{% log i %}{% endfor %}
    {% liquid
      log "end"
      break
      log "never"
    %}"""
    assert run(renderer, source).logs == [1, 2, "end"]


# --- errors ----------------------------------------------------------------------------------


def test_syntax_error_names_task_and_line(renderer: render.Renderer) -> None:
    message = syntax_error(renderer, "line one\n{% assign x = 1 %}\n{% if x %}\n{{ x | }}")
    assert message.startswith("task 'demo': line 4: ")


def test_unknown_tag_is_a_syntax_error(renderer: render.Renderer) -> None:
    assert syntax_error(renderer, "\n{% frobnicate %}").startswith("task 'demo': line 2: ")


def test_unclosed_block(renderer: render.Renderer) -> None:
    assert syntax_error(renderer, "{% for x in y %}") == "task 'demo': line 1: missing {% endfor %}"


def test_render_errors_name_the_line(renderer: render.Renderer) -> None:
    message = render_error(renderer, "a\nb\n{% for i in (1..2) %}\n{{ i | nofilter }}{% endfor %}")
    assert message == "line 4: unknown filter 'nofilter'"


def test_filter_errors_name_the_filter(renderer: render.Renderer) -> None:
    message = render_error(renderer, '\n{% assign x = "{" | parse_json %}')
    assert message.startswith("line 2: filter 'parse_json': invalid JSON")
    assert "filter 'divided_by'" in render_error(renderer, "{{ 1 | divided_by: 0 }}")
    assert "filter 'plus'" in render_error(renderer, "{{ 1 | plus: 1, 2 }}")


def test_no_other_exception_escapes(renderer: render.Renderer) -> None:
    class Hostile(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("boom")

        def __len__(self) -> int:
            return 1

    message = render_error(renderer, "\n{{ weird.x }}", weird=Hostile())
    assert message == "line 2: RuntimeError: boom"


def test_unknown_timezone_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="Mars/Olympus"):
        render.Renderer(timezone="Mars/Olympus")


# --- limits ----------------------------------------------------------------------------------


def limited(**kwargs: Any) -> render.Renderer:
    return render.Renderer(limits=config.Limits(**kwargs))


def test_huge_loop_fails_before_iterating() -> None:
    r = limited(loop_iterations=1000)
    started = time.monotonic()
    message = render_error(r, "\n{% for i in (1..1000000000) %}{% log i %}{% endfor %}")
    assert message == "line 2: limit exceeded: loop_iterations (1000)"
    assert time.monotonic() - started < 1
    assert "loop_iterations" in render_error(
        r, "{% for i in (1..1000000000) reversed %}{% endfor %}")
    assert "loop_iterations" in render_error(r, "{{ (1..1000000000) | join: ',' }}")


def test_loop_iterations_are_counted_across_loops() -> None:
    r = limited(loop_iterations=1000)
    assert run(r, "{% for i in (1..1000) %}{% endfor %}").actions == []
    message = render_error(r, "{% for i in (1..600) %}{% endfor %}{% for i in (1..600) %}"
                              "{% endfor %}")
    assert message == "line 1: limit exceeded: loop_iterations (1000)"
    nested = "{% for i in (1..100) %}{% for j in (1..100) %}{% endfor %}{% endfor %}"
    assert "loop_iterations (1000)" in render_error(r, nested)


def test_output_bytes_counts_text_and_collected_objects() -> None:
    r = limited(output_bytes=1000)
    assert render_error(r, "{% for i in (1..200) %}xxxxxxxxxx{% endfor %}") == (
        "line 1: limit exceeded: output_bytes (1000)")
    big = '{% for i in (1..200) %}{% action "echo", "xxxxxxxxxx" %}{% endfor %}'
    assert "limit exceeded: output_bytes (1000)" in render_error(r, big)
    capture = "{% capture c %}{% for i in (1..200) %}xxxxxxxxxx{% endfor %}{% endcapture %}"
    assert "limit exceeded: output_bytes (1000)" in render_error(r, capture)


def test_output_bytes_caps_growing_values() -> None:
    r = limited(output_bytes=100_000)
    source = '{% assign s = "x" %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}'
    assert "limit exceeded: output_bytes (100000)" in render_error(r, source)


def test_growing_numbers_are_capped() -> None:
    r = limited(output_bytes=1000)
    source = "{% assign n = 3 %}{% for i in (1..40) %}{% assign n = n | times: n %}{% endfor %}"
    assert "limit exceeded: output_bytes (1000)" in render_error(r, source)


def nested(depth: int, innermost: Any) -> Any:
    """`innermost` (a container: the deepest level) inside arrays, `depth` levels in all."""
    value = innermost
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("innermost", [[], ["x"], {}, {"k": None}])
def test_values_nested_past_the_json_depth_are_refused_at_the_boundary(
        renderer: render.Renderer, innermost: Any) -> None:
    """The depth check runs only for values measured large enough to be that deep: exactly
    MAX_JSON_DEPTH levels pass, one more is refused, whatever the innermost container."""
    depth = models.MAX_JSON_DEPTH
    ok, deep = nested(depth, innermost), nested(depth + 1, innermost)
    assert run(renderer, "{% log v %}", v=ok).logs == [ok]
    assert render_error(renderer, "{% log v %}", v=deep) == (
        f"line 1: log: a value nested more than {depth} levels deep")
    # An action's options and meta are checked together, one level deeper than the options.
    assert actions(renderer, '{% action "echo", v %}', v=nested(depth - 1, innermost))
    assert "nested more than" in render_error(renderer, '{% action "echo", v %}', v=ok)


def test_limit_errors_name_the_loop_line() -> None:
    r = limited(loop_iterations=50)
    source = "{% if true %}\n  {% for i in (1..100) %}{% endfor %}\n{% endif %}"
    assert render_error(r, source) == "line 2: limit exceeded: loop_iterations (50)"


def test_tablerow_is_limited_too() -> None:
    r = limited(loop_iterations=50)
    assert "<td" in r.render_text("{% tablerow i in (1..3) %}{{ i }}{% endtablerow %}", {},
                                  name="demo")
    assert "loop_iterations (50)" in render_error(
        r, "{% tablerow i in (1..100) %}{% endtablerow %}")


def test_render_seconds() -> None:
    r = limited(render_seconds=0.05, loop_iterations=100_000_000)
    started = time.monotonic()
    source = "{% for i in (1..50000000) %}{% assign x = i | times: 2 %}{% endfor %}"
    assert render_error(r, source) == "line 1: limit exceeded: render_seconds (0.05)"
    assert time.monotonic() - started < 2


def test_nesting_is_checked_at_compile() -> None:
    r = limited(nesting=5)
    deep = "{% if true %}" * 6 + "{% endif %}" * 6
    message = syntax_error(r, deep)
    assert message.startswith("task 'demo': line 1: limit exceeded: nesting (5)")
    assert run(r, "{% if true %}" * 4 + "{% endif %}" * 4).errors == []


# --- render_text -----------------------------------------------------------------------------


def test_render_text(renderer: render.Renderer) -> None:
    source = ("user/{{ options.topic }}/go\n"
              "{% if options.hourly %}mechanic/scheduler/hour{% endif %}")
    text = renderer.render_text(source, {"options": {"topic": "orders", "hourly": True}},
                                name="demo")
    assert text == "user/orders/go\nmechanic/scheduler/hour"


def test_render_text_caches_and_reports_errors(renderer: render.Renderer) -> None:
    source = "{{ options.x | upcase }}"
    assert renderer.render_text(source, {"options": {"x": "a"}}, name="o") == "A"
    assert renderer.render_text(source, {"options": {"x": "b"}}, name="o") == "B"
    assert renderer._texts[source] is renderer._texts[source]
    with pytest.raises(errors.ConfigError, match=r"^task 'opt': line 1: "):
        renderer.render_text("{{ x | }}", {}, name="opt")
    with pytest.raises(errors.RenderError, match=r"^line 1: unknown filter"):
        renderer.render_text("{{ x | nope }}", {}, name="opt")


def test_date_now_uses_the_clock(renderer: render.Renderer) -> None:
    result = run(renderer, '{% log "now" | date: "%F %T" %}{% log "now" | date %}')
    assert result.logs == ["2023-11-14 22:13:20", "2023-11-14T22:13:20Z"]


def test_timezone_applies_to_dates() -> None:
    r = render.Renderer(timezone="America/Chicago", clock=lambda: NOW)
    assert run(r, '{% log "now" | date %}{% log 0 | date: "%F %H:%M %z" %}').logs == [
        "2023-11-14T16:13:20-06:00", "1969-12-31 18:00 -0600"]
