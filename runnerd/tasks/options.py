"""Mechanic's task option keys: `name__flag_flag__flag…` parsed, values checked (pure, stdlib).

A key is a name, then groups separated by `__`, each holding flags separated by `_`: one input
type (`multiline`, `boolean`, `number`, `code`, `keyval`, `array`, `date`, `datetime`, `time`,
`color`, `global`, `secret`, `range_min0_max100_step5`, `select_o1_a_o2_b`, `choice_o1_…`,
`multiselect_o1_…`, `picker_product[_array]`) and modifiers (`required`, `email`, `userform`,
`futureonly`). The first input type wins; a second one after `keyval` or `array` types their
items (`keyval_number`, `array_number`), after `code` it is the field's shape
(`code_multiline`). Modifiers may follow a choice list in its own segment
(`select_o1_a_o2_b__required`) or at its end (`select_o1_a_o2_b_required`). Unknown flags are
kept in `OptionKey.unknown` and otherwise ignored, so tasks written for a newer Mechanic still
load.

Values are read as Mechanic stores them (`coerce`): numbers and booleans given as text
(`"5"`, `"true"`) become numbers and booleans, as do the items of `keyval_number` and
`array_number` options.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

TYPES = frozenset({"multiline", "boolean", "number", "code", "keyval", "array", "date",
                   "datetime", "time", "color", "global", "secret", "range", "select", "choice",
                   "multiselect", "picker"})
MODIFIERS = frozenset({"required", "email", "userform", "futureonly"})
#: Input types whose values are text rendered as Liquid per event (None: a plain text field).
TEXT_TYPES = frozenset({None, "multiline"})

_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_BOUND = re.compile(r"^(min|max|step)(-?\d+(?:\.\d+)?)$")
_FORMATS = {"date": ("%Y-%m-%d", "YYYY-MM-DD"),
            "datetime": ("%Y-%m-%dT%H:%M", "YYYY-MM-DDTHH:MM"),
            "time": ("%H:%M", "HH:MM")}


@dataclasses.dataclass(frozen=True, slots=True)
class OptionKey:
    """One option key, parsed."""

    key: str
    name: str
    type: str | None = None  #: the input type; None for a plain text field
    modifiers: frozenset[str] = frozenset()
    choices: tuple[str, ...] = ()  #: select, choice and multiselect values
    bounds: Mapping[str, float] = dataclasses.field(default_factory=dict)  #: range min/max/step
    picker: str | None = None  #: product, variant or collection
    unknown: tuple[str, ...] = ()
    item: str | None = None  #: `number` for `keyval_number` / `array_number`

    @property
    def label(self) -> str:
        """The name as Mechanic shows it: underscores as spaces, first letter capitalised."""
        text = self.name.replace("_", " ").strip()
        return text[:1].upper() + text[1:]

    @property
    def required(self) -> bool:
        """Whether the option must have a value."""
        return "required" in self.modifiers


@functools.lru_cache(maxsize=1024)
def parse_key(key: str) -> OptionKey:
    """Parse `key` by Mechanic's grammar."""
    name, *groups = key.split("__")
    kind: str | None = None
    modifiers: set[str] = set()
    choices: list[str] = []
    bounds: dict[str, float] = {}
    picker: str | None = None
    item: str | None = None
    unknown: list[str] = []
    for group in groups:
        tokens = [t for t in group.split("_") if t]
        while tokens:
            token = tokens.pop(0)
            if token in ("select", "choice", "multiselect"):
                while tokens and tokens[-1] in MODIFIERS:
                    modifiers.add(tokens.pop())
                kind, choices = token, _choices(tokens)
                tokens = []
            elif token == "range":
                kind = token
                while tokens and _BOUND.match(tokens[0]):
                    which, number = _BOUND.match(tokens.pop(0)).groups()  # type: ignore[union-attr]
                    bounds[which] = float(number)
            elif token == "picker":
                kind = token
                picker = tokens.pop(0) if tokens else None
                if tokens and tokens[0] == "array":
                    tokens.pop(0)
                    modifiers.add("array")
            elif token in TYPES and kind in ("keyval", "array"):
                item = token
            elif token in TYPES and kind is None:
                kind = token
            elif token in MODIFIERS:
                modifiers.add(token)
            else:
                unknown.append(token)
    return OptionKey(key=key, name=name, type=kind, modifiers=frozenset(modifiers),
                     choices=tuple(choices), bounds=bounds, picker=picker, unknown=tuple(unknown),
                     item=item)


def _choices(tokens: list[str]) -> list[str]:
    out: list[list[str]] = []
    for token in tokens:
        if re.fullmatch(r"o\d+", token):
            out.append([])
        elif out:
            out[-1].append(token)
    return ["_".join(words) for words in out if words]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and not value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _same_choice(value: Any, choice: str) -> bool:
    return str(value).replace(" ", "_").lower() == choice.lower()


def _boolean(spec: OptionKey, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false (got {value!r})"


def _numeric(spec: OptionKey, value: Any) -> str | None:
    number = _number(value)
    if number is None:
        return f"must be a number (got {value!r})"
    low, high = spec.bounds.get("min"), spec.bounds.get("max")
    if (low is not None and number < low) or (high is not None and number > high):
        if low is not None and high is not None:
            return f"must be between {low:g} and {high:g} (got {value!r})"
        return f"is out of range (got {value!r})"
    return None


def _choice(spec: OptionKey, value: Any) -> str | None:
    if not spec.choices or any(_same_choice(value, c) for c in spec.choices):
        return None
    return f"must be one of {', '.join(spec.choices)} (got {value!r})"


def _choices_list(spec: OptionKey, value: Any) -> str | None:
    if not isinstance(value, (list, tuple)):
        return f"must be a list (got {value!r})"
    bad = [v for v in value if not any(_same_choice(v, c) for c in spec.choices)]
    if spec.choices and bad:
        return f"must be among {', '.join(spec.choices)} (got {bad[0]!r})"
    return None


def _items(spec: OptionKey, items: Any) -> str | None:
    if spec.item == "number":
        bad = [v for v in items if _number(v) is None]
        return f"must hold numbers (got {bad[0]!r})" if bad else None
    return None


def _mapping(spec: OptionKey, value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"must be a mapping of keys to values (got {value!r})"
    return _items(spec, value.values())


def _list(spec: OptionKey, value: Any) -> str | None:
    if not isinstance(value, (list, tuple)):
        return f"must be a list (got {value!r})"
    return _items(spec, value)


def _formatted(spec: OptionKey, value: Any) -> str | None:
    fmt, shown = _FORMATS[str(spec.type)]
    try:
        dt.datetime.strptime(str(value)[: len(shown)], fmt)
    except ValueError:
        return f"must be a {spec.type} like {shown} (got {value!r})"
    return None


def _colour(spec: OptionKey, value: Any) -> str | None:
    ok = re.fullmatch(r"#[0-9a-fA-F]{6}", str(value))
    return None if ok else f"must be a colour like #RRGGBB (got {value!r})"


#: Why a (non-empty) value does not fit its input type, by type; None when it fits.
_CHECKS: dict[str, Callable[[OptionKey, Any], str | None]] = {
    "boolean": _boolean, "number": _numeric, "range": _numeric, "select": _choice,
    "choice": _choice, "multiselect": _choices_list, "keyval": _mapping, "array": _list,
    "date": _formatted, "datetime": _formatted, "time": _formatted, "color": _colour,
}


def _email_problem(value: Any) -> str | None:
    items = (value if isinstance(value, (list, tuple)) else list(value.values())
             if isinstance(value, Mapping) else str(value).split(","))
    for item in items:
        if not _EMAIL.match(str(item).strip()):
            return f"must be an email address (got {str(item).strip()!r})"
    return None


def _scalar(kind: str | None, value: Any) -> Any:
    if isinstance(value, str) and kind in ("number", "range"):
        number = _number(value.strip())
        if number is not None:
            return int(number) if number.is_integer() and "." not in value else number
    if isinstance(value, str) and kind == "boolean" and value.strip() in ("true", "false"):
        return value.strip() == "true"
    return value


def coerce(options: Mapping[str, Any]) -> dict[str, Any]:
    """Option values as Mechanic stores them: numbers and booleans given as text (`"5"`,
    `"true"`) as numbers and booleans, and so the items of `keyval_number`/`array_number`."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        spec = parse_key(str(key))
        if spec.item and isinstance(value, Mapping):
            value = {k: _scalar(spec.item, v) for k, v in value.items()}
        elif spec.item and isinstance(value, (list, tuple)):
            value = [_scalar(spec.item, v) for v in value]
        else:
            value = _scalar(spec.type, value)
        out[key] = value
    return out


def missing(options: Mapping[str, Any]) -> list[str]:
    """The required options that have no value."""
    return [key for key, value in options.items()
            if _empty(value) and parse_key(str(key)).required]


def validate(options: Mapping[str, Any], *, task: str, required: bool = True) -> list[str]:
    """Problems with a task's option values, one line each, naming the task and the option;
    with `required` false, an empty required option is not a problem (the task is disabled)."""
    problems = []
    for key, value in options.items():
        spec = parse_key(str(key))
        problem: str | None
        if _empty(value):
            problem = "is required" if spec.required and required else None
        else:
            check = _CHECKS.get(spec.type or "")
            problem = check(spec, value) if check else None
            if problem is None and "email" in spec.modifiers:
                problem = _email_problem(value)
        if problem:
            problems.append(f"task {task!r}: option {key!r} {problem}")
    return problems


def text_keys(options: Mapping[str, Any]) -> list[str]:
    """The options whose values are text to render as Liquid per event, before the code:
    string values of plain (untyped) and `multiline` keys."""
    return [key for key, value in options.items()
            if isinstance(value, str) and parse_key(str(key)).type in TEXT_TYPES]
