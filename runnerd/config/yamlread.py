"""Reading a parsed YAML document while collecting every problem instead of stopping at the first.

`Reader.get` takes a key of a section with its type, default and check, and records a problem
naming the key's path (`listen.port: expected an integer, got 'abc'`) when it is wrong;
`substitute` fills `${VAR}` from the environment. `config` describes runnerd's sections with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from runnerd.config import durations

#: `${VAR}`, or the escape `$${`, which stands for a literal `${`.
_VAR = re.compile(r"\$(\$)\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Reader:
    """Collects every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        """Record a problem at `path`."""
        self.problems.append(f"{path}: {message}" if path else message)

    def section(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        """`value` as a mapping of `allowed` keys ({} when absent); a problem per unknown key."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {describe(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.problem(join(path, str(key)), f"unknown key (known: {hint})")
        return value

    def get(
        self,
        section: dict[str, Any],
        path: str,
        key: str,
        kind: type | tuple[type, ...],
        default: Any,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """`section[key]` if it is of `kind` and passes `check`, else `default` and a problem."""
        if key not in section or section[key] is None and default is None:
            return default
        value = section[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            self.problem(join(path, key), f"expected {expected}, got {describe(value)}")
            return default
        if check is not None and (message := check(value)) is not None:
            self.problem(join(path, key), message)
            return default
        return value

    def duration(self, section: dict[str, Any], path: str, key: str, default: Any,
                 check: Callable[[float], str | None] | None = None) -> Any:
        """`section[key]` as seconds (`30s`, `10m`, `2h`, `1d` or a number) that passes `check`."""
        if key not in section or section[key] is None:
            return default
        try:
            value = durations.parse_duration(section[key])
        except ValueError as exc:
            self.problem(join(path, key), str(exc))
            return default
        if check is not None and (message := check(value)) is not None:
            self.problem(join(path, key), message)
            return default
        return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "a mapping", list: "a list"}


def describe(value: Any) -> str:
    """A value as a problem names it: `null`, `a list`, `'abc'`."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: f"{value!r}",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def join(path: str, key: str | int) -> str:
    """The path of `key` under `path`: `listen.port`, `tasks[2]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key.isprintable():  # a line break in a key must not break the one-line message
        key = repr(key)
    return f"{path}.{key}" if path else key


def positive(value: Any) -> str | None:
    """A check: greater than 0."""
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    """A check: one of `choices`."""
    def check(value: Any) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}, got {value!r}"

    return check


def substitute(value: Any, path: str, environ: Mapping[str, str], reader: Reader) -> Any:
    """Replace `${VAR}` in every string of `value` from `environ`; `$${` gives a literal `${`.

    A missing VAR is a problem.
    """
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            if match.group(1):
                return "${"
            name = match.group(2)
            if name not in environ:
                reader.problem(path, f"environment variable {name} is not set")
                return ""
            return environ[name]

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute(v, join(path, str(k)), environ, reader) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, join(path, i), environ, reader) for i, v in enumerate(value)]
    return value


def items(raw: Any, path: str, r: Reader) -> list[tuple[str, dict[str, Any]]]:
    """The mappings of a list, each with its path; anything else is a problem."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        r.problem(path, f"expected a list, got {describe(raw)}")
        return []
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            r.problem(f"{path}[{i}]", f"expected a mapping, got {describe(item)}")
            continue
        out.append((f"{path}[{i}]", item))
    return out


def unique(names: list[str], path: str, what: str, r: Reader) -> None:
    """A problem for each name met before."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            r.problem(f"{path}[{i}].name", f"duplicate {what} {name!r}")
        seen.add(name)
