"""`browser`: a user agent string read as the browser, OS and device it names.

The reading is ua-parser's (uap-python), on the uap-core rules ("Browserscope") that Mechanic's
documentation names as its source. Each part prints as Mechanic's does (`Google 79.0.259819395`,
`iOS 12.4`, `iPhone`) and has fields: `browser.name`, `browser.version` (`.major`, `.minor`),
`browser.os` (`.name`, `.version`), `browser.device` (`.name`, `.brand`, `.model`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

#: Longer user agents are refused: the rules are regular expressions run on the whole text.
MAX_USER_AGENT = 2_000


class Part(Mapping[str, Any]):
    """One part of a reading: prints as `text`, its fields read by name."""

    __slots__ = ("_fields", "_text")

    def __init__(self, text: str, fields: Mapping[str, Any]) -> None:
        self._text = text
        self._fields = dict(fields)

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __liquid__(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text

    def __eq__(self, other: object) -> bool:
        return self._text == (str(other) if isinstance(other, (str, Part)) else other)

    def __hash__(self) -> int:
        return hash(self._text)


def _version(*numbers: str | None) -> Part:
    shown = [n for n in numbers if n]
    return Part(".".join(shown), {"major": numbers[0], "minor": numbers[1],
                                  "patch": numbers[2] if len(numbers) > 2 else None})


def _named(name: str | None, version: Part, extra: Mapping[str, Any]) -> Part:
    text = " ".join(t for t in (name or "", str(version)) if t)
    return Part(text, {"name": name, "version": version, **extra})


def browser(value: Any) -> Part | None:
    """`browser`: the user agent `value` read (see the module docstring); nil for nil."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a user agent string")
    if len(value) > MAX_USER_AGENT:
        raise ValueError(f"a user agent longer than {MAX_USER_AGENT} characters")
    import ua_parser  # on first use: its rules cost ~4 MiB the daemon need not hold at idle

    result = ua_parser.parse(value)
    agent, os_, device = result.user_agent, result.os, result.device
    os_part = _named(os_.family if os_ else None,
                     _version(os_.major, os_.minor, os_.patch) if os_ else _version(None, None),
                     {})
    device_name = device.family if device else None
    device_part = Part(device_name or "", {
        "name": device_name, "brand": device.brand if device else None,
        "model": device.model if device else None})
    version = (_version(agent.major, agent.minor, agent.patch) if agent
               else _version(None, None))
    return _named(agent.family if agent else None, version, {"os": os_part, "device": device_part})
