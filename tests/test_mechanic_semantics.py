"""Mechanic's Liquid semantics where python-liquid's defaults differ (issue 18, items 1-5)."""

from __future__ import annotations

from typing import Any

import pytest

from runnerd import config, errors
from runnerd.liquid import render

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def renderer() -> render.Renderer:
    return render.Renderer(timezone="UTC", clock=lambda: NOW)


def text(renderer: render.Renderer, source: str, **variables: Any) -> str:
    return renderer.render_text(source, variables, name="demo")


def logs(renderer: render.Renderer, source: str, **variables: Any) -> list[Any]:
    return renderer.render(renderer.compile(source, name="demo"), variables).logs


# --- 1. blank is Rails' blank? -------------------------------------------------------------

@pytest.mark.parametrize("value", [None, False, "", "  \n", [], {}])
def test_blank_values(renderer: render.Renderer, value: Any) -> None:
    source = ("{% if x == blank %}eq{% endif %}{% if blank == x %}EQ{% endif %}"
              "{% if x != blank %}ne{% endif %}{% unless x == blank %}un{% endunless %}")
    assert text(renderer, source, x=value) == "eqEQ"


def test_missing_variable_and_unset_option_are_blank(renderer: render.Renderer) -> None:
    source = ("{% if options.days != blank %}+{{ options.days }}.days{% endif %}"
              "{% if nothing == blank %}missing{% endif %}")
    assert text(renderer, source, options={}) == "missing"
    assert text(renderer, source, options={"days": 3}) == "+3.daysmissing"


@pytest.mark.parametrize("value", [0, 1, True, " x ", [None], {"a": None}])
def test_not_blank_values(renderer: render.Renderer, value: Any) -> None:
    assert text(renderer, "{% if x != blank %}ne{% endif %}{% if x == blank %}eq{% endif %}",
                x=value) == "ne"


def test_blank_inside_mechanic_tags_and_loops(renderer: render.Renderer) -> None:
    source = ("{% for i in (1..2) %}{% log %}{% if x == blank %}\"blank\"{% else %}\"set\""
              "{% endif %}{% endlog %}{% endfor %}")
    assert logs(renderer, source) == ["blank", "blank"]


@pytest.mark.parametrize(("value", "expected"), [(None, "B"), ("  ", "B"), (False, "B"),
                                                  (0, "Z"), ("a", "N")])
def test_when_blank_in_a_case(renderer: render.Renderer, value: Any, expected: str) -> None:
    source = "{% case x %}{% when blank %}B{% when 0 %}Z{% else %}N{% endcase %}"
    assert text(renderer, source, x=value) == expected


def test_empty_keeps_its_meaning(renderer: render.Renderer) -> None:
    # `empty` is not `blank`: nil and whitespace are not empty (Ruby Liquid)
    source = "{% if x == empty %}e{% else %}n{% endif %}"
    assert [text(renderer, source, x=v) for v in ("", " ", None, [], {})] == [
        "e", "n", "n", "e", "e"]


# --- 2. keyword-like variable names ---------------------------------------------------------

@pytest.mark.parametrize("name", ["limit", "offset", "in", "with", "required", "cols",
                                  "reversed", "for", "as", "if", "else"])
def test_keyword_names_assign_and_read(renderer: render.Renderer, name: str) -> None:
    source = (f"{{% assign {name} = 7 %}}{{{{ {name} }}}}|{{{{ {name} | plus: 1 }}}}|"
              f"{{% if {name} > 5 %}}big{{% endif %}}|{{{{ h.{name} }}}}|{{% log v: {name} %}}")
    assert text(renderer, source, h={name: "k"}) == "7|8|big|k|"
    assert logs(renderer, source, h={}) == [{"v": 7}]


def test_for_keywords_still_work_next_to_names(renderer: render.Renderer) -> None:
    source = ("{% assign limit = 2 %}{% assign offset = 1 %}"
              "{% for x in (1..5) reversed limit: limit offset: offset %}{{ x }}{% endfor %}"
              "{% for limit in (1..2) %}{{ limit }}{% endfor %}"
              "{% for x in (1..3) reversed %}{{ x }}{% endfor %}")
    assert text(renderer, source) == "3212321"  # slice first, then reverse


# --- 3. nil and false in text filters -------------------------------------------------------

def test_nil_and_false_in_text_filters(renderer: render.Renderer) -> None:
    source = ('{{ "a" | append: nil }}|{{ "a" | append: false }}|{{ "a" | prepend: x }}|'
              '{{ false | append: "x" }}|{{ nil | append: "x" }}|{{ "a" | append: true }}')
    assert text(renderer, source) == "a|afalse|a|falsex|x|atrue"


def test_unset_option_in_a_recipient_list(renderer: render.Renderer) -> None:
    source = ('{% assign to = "a@example.com" | append: "," | append: options.cc %}'
              '{{ to }}|{{ list | join: "," }}')
    assert text(renderer, source, options={}, list=["a", None, False, "b"]) == (
        "a@example.com,|a,,false,b")


def test_arrays_and_hashes_print_as_ruby_liquid_prints_them(renderer: render.Renderer) -> None:
    # Ruby Liquid writes an array's items one after the other (nested ones too) and a hash
    # in its inspect form; a text filter reads either in that form (Liquid::Utils.to_s)
    values = {"a": [True, None, 1, "s", [False, None]], "h": {"x": 1, "y": None, "z": ["a"]}}
    assert text(renderer, "{{ a }}|{{ h }}", **values) == 'true1sfalse|{"x"=>1, "y"=>nil, "z"=>["a"]}'
    assert text(renderer, '{{ a | append: "!" }}', a=["x", None]) == '["x", nil]!'
    assert text(renderer, '{{ "h: " | append: h }}', h={"k": False}) == 'h: {"k"=>false}'
    assert "None" not in text(renderer, "{% capture c %}{{ a }}{% endcapture %}{{ c }}", **values)


# --- 4. filter chains in mapped tag arguments ------------------------------------------------

def test_filter_chain_ends_at_the_next_pair(renderer: render.Renderer) -> None:
    source = ('{% log a: x | times: 100.0 | divided_by: y, b: z %}'
              '{% action "echo", n: "2024-01-02" | date: "%d", m: list[1], o: "x" %}')
    result = renderer.render(renderer.compile(source, name="demo"),
                             {"x": 5, "y": 2, "z": "zed", "list": [1, 2]})
    assert result.logs == [{"a": 250.0, "b": "zed"}]
    assert result.actions[0].options == {"n": "02", "m": 2, "o": "x"}


def test_filter_keyword_arguments_without_a_following_pair(renderer: render.Renderer) -> None:
    source = '{% log a: "1,2,3" | split: "," | in_groups: 2, fill_with: false %}'
    # `fill_with:` follows a comma: it is read as the tag's next pair, as in Mechanic
    assert logs(renderer, source) == [{"a": [["1", "2"], ["3", None]], "fill_with": False}]


# --- 5. the output stream of JSON objects ---------------------------------------------------

def test_json_objects_written_as_text_are_collected_in_order(renderer: render.Renderer) -> None:
    source = ('{"log": "first"}\n{% log "second" %}\n'
              '{"action": {"type": "echo", "options": {{ data | json }}, "meta": {"m": 1}}}\n'
              '{% action "echo", "tag" %}\n{"error": {"message": "{{ data.a }}"}}\n'
              '{"log": {{ data.a | json }}}')
    result = renderer.render(renderer.compile(source, name="demo"), {"data": {"a": "x"}})
    assert result.logs == ["first", "second", "x"]
    assert [(a.type, a.options, a.meta) for a in result.actions] == [
        ("echo", {"a": "x"}, {"m": 1}), ("echo", "tag", None)]
    assert result.errors == [{"message": "x"}]


def test_text_that_is_not_an_object_is_ignored(renderer: render.Renderer) -> None:
    source = 'hello {"log": "not read: text before it"}\n[1, 2]\n{"other": 1}{"log": "read"}'
    result = renderer.render(renderer.compile('{"log": "a"} {"x": 1, "log": 2} ' + source,
                                              name="demo"), {})
    assert result.logs == ["a"]
    result = renderer.render(renderer.compile('{"other": 1}{"log": "read"} junk {"log": "no"}',
                                              name="demo"), {})
    assert result.logs == ["read"]


def test_a_bad_action_written_as_text_fails_the_render(renderer: render.Renderer) -> None:
    with pytest.raises(errors.RenderError, match="action: the type must be a non-empty string"):
        renderer.render(renderer.compile('{"action": {"options": {}}}', name="demo"), {})


def test_text_objects_count_towards_the_output_limit() -> None:
    small = render.Renderer(limits=config.Limits(output_bytes=64))
    with pytest.raises(errors.RenderError, match="output_bytes"):
        small.render(small.compile('{"log": "' + "x" * 80 + '"}', name="demo"), {})


def test_text_objects_before_a_break_outside_a_loop_stand(renderer: render.Renderer) -> None:
    result = renderer.render(renderer.compile('{"log": 1}{% break %}{"log": 2}', name="demo"), {})
    assert result.logs == [1]


# --- 9. messages in Liquid's words ----------------------------------------------------------

@pytest.mark.parametrize(("source", "message"), [
    ('{{ "x" | concat: 1 }}', "line 1: filter 'concat': expected an array to add, got a number"),
    ("{{ x | concat: x }}", "line 1: filter 'concat': expected an array to add, got nil"),
    ('{{ "a" | append: "b", "c" }}', "line 1: filter 'append': takes 1 argument, got 2"),
    ('{{ "a" | append }}', "line 1: filter 'append': missing an argument"),
    ('{{ "a" | split: ",", bad: 1 }}', "line 1: filter 'split': unknown option 'bad'"),
    ("{{ 1 | abs: 1 }}", "line 1: filter 'abs': takes 0 arguments, got 1"),
    ('{{ "abc" | truncate: "x" }}', "line 1: filter 'truncate': expected an integer, found a string"),
    ("{{ 1 | divided_by: 0 }}", "line 1: filter 'divided_by': can't divide by 0"),
    ("{% assign h = hash %}\n{% assign h[line_item] = 1 %}", "line 2: assign: the key is nil"),
    ('{% if list > "b" %}{% endif %}',
     "line 1: '<' and '>' are not supported between a string and an array"),
    ('{{ "x" | slice: nil }}', "line 1: filter 'slice': start must be an integer, got nil"),
])
def test_messages_use_liquid_words(renderer: render.Renderer, source: str, message: str) -> None:
    with pytest.raises(errors.RenderError) as caught:
        text(renderer, source, list=[1])
    assert str(caught.value) == message
    for python in ("None", "Undefined(", "positional", "keyword", "__init__", "'str'", "list'"):
        assert python not in str(caught.value)


def test_concat_reads_nil_and_single_values_as_arrays(renderer: render.Renderer) -> None:
    source = '{{ x | concat: list | join: "," }}|{{ "a" | concat: list | join: "," }}'
    assert text(renderer, source, list=[1, 2]) == "1,2|a,1,2"
