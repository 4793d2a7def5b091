"""Mechanic's option key grammar, value checks and the keys rendered as Liquid."""

from __future__ import annotations

from typing import Any

import pytest

from runnerd.tasks import options


def test_plain_key() -> None:
    spec = options.parse_key("email_subject")
    assert (spec.name, spec.type, spec.modifiers, spec.label) == (
        "email_subject", None, frozenset(), "Email subject")


@pytest.mark.parametrize(("key", "kind", "modifiers"), [
    ("email__email_required", None, {"email", "required"}),
    ("notes__multiline", "multiline", set()),
    ("enabled__boolean", "boolean", set()),
    ("count__number_required", "number", {"required"}),
    ("script__code", "code", set()),
    ("tags__array", "array", set()),
    ("map__keyval", "keyval", set()),
    ("start__date_futureonly", "date", {"futureonly"}),
    ("at__datetime", "datetime", set()),
    ("at__time", "time", set()),
    ("bg__color", "color", set()),
    ("api_key__secret", "secret", set()),
    ("shared__global", "global", set()),
    ("plan__select_o1_basic_o2_pro__userform__required", "select", {"userform", "required"}),
])
def test_types_and_modifiers(key: str, kind: str | None, modifiers: set[str]) -> None:
    spec = options.parse_key(key)
    assert spec.type == kind
    assert spec.modifiers == frozenset(modifiers)
    assert spec.unknown == ()


def test_choices_range_and_picker() -> None:
    assert options.parse_key("plan__select_o1_basic_o2_pro_plus").choices == ("basic", "pro_plus")
    assert options.parse_key("size__choice_o1_s_o2_m_o3_l").choices == ("s", "m", "l")
    assert options.parse_key("days__multiselect_o1_mon_o2_tue").type == "multiselect"
    spec = options.parse_key("qty__range_min0_max100_step5")
    assert (spec.type, dict(spec.bounds)) == ("range", {"min": 0, "max": 100, "step": 5})
    picker = options.parse_key("products__picker_product_array__required")
    assert (picker.type, picker.picker, picker.modifiers) == (
        "picker", "product", frozenset({"array", "required"}))


def test_unknown_flags_are_kept_and_ignored() -> None:
    spec = options.parse_key("x__sparkly_required")
    assert (spec.type, spec.modifiers, spec.unknown) == (None, frozenset({"required"}),
                                                         ("sparkly",))
    assert options.validate({"x__sparkly": "v"}, task="t") == []


@pytest.mark.parametrize(("key", "value"), [
    ("name", "anything"),
    ("name", 5),
    ("name__required", "x"),
    ("to__email", "a@example.test"),
    ("to__email_required", "a@example.test, b@example.test"),
    ("to__array_email", ["a@example.test", "b@example.test"]),
    ("n__number", 3),
    ("n__number", "3.5"),
    ("on__boolean", False),
    ("q__range_min0_max10", 10),
    ("plan__select_o1_basic_o2_pro_plus", "pro_plus"),
    ("plan__select_o1_basic_o2_pro_plus", "pro plus"),
    ("plan__choice_o1_basic_o2_pro", "basic"),
    ("days__multiselect_o1_mon_o2_tue", ["mon", "tue"]),
    ("m__keyval", {"a": "b"}),
    ("l__array", ["a"]),
    ("d__date", "2024-02-29"),
    ("d__datetime", "2024-02-29T13:45"),
    ("d__time", "13:45"),
    ("c__color", "#00ffAA"),
    ("optional__number", None),
    ("optional__email", ""),
])
def test_valid_values(key: str, value: Any) -> None:
    assert options.validate({key: value}, task="t") == []


@pytest.mark.parametrize(("key", "value", "why"), [
    ("name__required", None, "is required"),
    ("name__required", "", "is required"),
    ("list__array_required", [], "is required"),
    ("to__email", "not-an-address", "must be an email address (got 'not-an-address')"),
    ("to__email", "a@example.test, nope", "must be an email address (got 'nope')"),
    ("n__number", "many", "must be a number"),
    ("n__number", True, "must be a number"),
    ("on__boolean", "yes", "must be true or false"),
    ("q__range_min0_max10", 11, "must be between 0 and 10"),
    ("q__range_min5", 1, "is out of range"),
    ("plan__select_o1_basic_o2_pro", "gold", "must be one of basic, pro (got 'gold')"),
    ("days__multiselect_o1_mon_o2_tue", ["mon", "sun"], "must be among mon, tue (got 'sun')"),
    ("days__multiselect_o1_mon_o2_tue", "mon", "must be a list"),
    ("m__keyval", ["a"], "must be a mapping"),
    ("l__array", "a", "must be a list"),
    ("d__date", "29/02/2024", "must be a date like YYYY-MM-DD"),
    ("d__date", "2023-02-29", "must be a date like YYYY-MM-DD"),
    ("d__time", "25:00", "must be a time like HH:MM"),
    ("c__color", "red", "must be a colour like #RRGGBB"),
])
def test_invalid_values(key: str, value: Any, why: str) -> None:
    [problem] = options.validate({key: value}, task="demo")
    assert problem.startswith(f"task 'demo': option {key!r} ")
    assert why in problem
    assert "\n" not in problem


def test_validate_reports_every_problem_in_order() -> None:
    problems = options.validate({"a__required": None, "ok": "x", "b__number": "x"}, task="t")
    assert [p.split(":")[1].strip() for p in problems] == [
        "option 'a__required' is required", "option 'b__number' must be a number (got 'x')"]


def test_text_keys() -> None:
    values = {
        "subject": "Hello {{ event.data.name }}",
        "body__multiline": "Line\n{{ x }}",
        "to__email_required": "a@example.test",
        "count": 5,
        "enabled__boolean": True,
        "n__number": "5",
        "script__code": "{{ raw }}",
        "map__keyval": {"a": "{{ b }}"},
        "plan__select_o1_a_o2_b": "a",
        "key__secret": "s",
    }
    assert options.text_keys(values) == ["subject", "body__multiline", "to__email_required"]


@pytest.mark.parametrize(("key", "kind", "item", "modifiers"), [
    ("weights__keyval_number", "keyval", "number", set()),
    ("sizes__array_number_required", "array", "number", {"required"}),
    ("contacts__keyval_email", "keyval", None, {"email"}),
    ("snippet__code_multiline", "code", None, set()),
])
def test_typed_items_and_shapes(key: str, kind: str, item: str | None,
                                modifiers: set[str]) -> None:
    spec = options.parse_key(key)
    assert (spec.type, spec.item, spec.modifiers) == (kind, item, frozenset(modifiers))


@pytest.mark.parametrize("key", [
    "aggregate__select_o1_first_o2_last_o3_sum__userform__required",
    "aggregate__select_o1_first_o2_last_o3_sum_userform_required",
])
def test_modifiers_after_choices(key: str) -> None:
    # Mechanic's options page: both spellings mean the same
    spec = options.parse_key(key)
    assert (spec.type, spec.choices, spec.modifiers) == (
        "select", ("first", "last", "sum"), frozenset({"userform", "required"}))


def test_values_stored_as_text_are_coerced() -> None:
    coerced = options.coerce({
        "count__number": "5", "ratio__number": "2.5", "pct__range_min0_max100": " 40 ",
        "on__boolean": "true", "off__boolean": "false", "text": "5",
        "weights__keyval_number": {"a": "1", "b": "1.5"}, "sizes__array_number": ["2", 3],
        "bad__number": "many"})
    assert coerced == {
        "count__number": 5, "ratio__number": 2.5, "pct__range_min0_max100": 40,
        "on__boolean": True, "off__boolean": False, "text": "5",
        "weights__keyval_number": {"a": 1, "b": 1.5}, "sizes__array_number": [2, 3],
        "bad__number": "many"}
    assert options.validate(coerced, task="t") == ["task 't': option 'bad__number' must be a "
                                                   "number (got 'many')"]


def test_typed_items_are_checked() -> None:
    assert options.validate({"w__keyval_number": {"a": "x"}, "s__array_number": [1, "y"],
                             "c__keyval_email": {"ann": "nope"}}, task="t") == [
        "task 't': option 'w__keyval_number' must hold numbers (got 'x')",
        "task 't': option 's__array_number' must hold numbers (got 'y')",
        "task 't': option 'c__keyval_email' must be an email address (got 'nope')"]


def test_required_options_of_a_disabled_task() -> None:
    values = {"to__email_required": None, "note": ""}
    assert options.missing(values) == ["to__email_required"]
    assert options.validate(values, task="t", required=False) == []
    assert options.validate(values, task="t") == [
        "task 't': option 'to__email_required' is required"]
