"""String filters: regex `match`/`scan`, `unindent`, `e164`, `handleize`, and `split`/`replace`/
`newline_to_br` with Mechanic's newline rule (pure functions, stdlib only).

Regular expressions use Python's `re` with Ruby's common spellings translated (`(?<name>…)`,
`\\A`, `\\z`, `\\h`, POSIX classes) and `^`/`$` matching at line breaks, as in Ruby. `re` cannot
be interrupted, so catastrophic backtracking is bounded only by size: the subject text is capped
at `MAX_REGEX_INPUT` characters and the pattern at `MAX_PATTERN` (longer input is an error).
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from typing import Any

from runnerd.liquid.filters import sizes

MAX_REGEX_INPUT = 100_000
MAX_PATTERN = 1_000

_POSIX = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z",
          "lower": "a-z", "space": r"\s", "xdigit": "0-9a-fA-F", "word": r"\w",
          "punct": r"!-/:-@\[-`{-~", "blank": r" \t", "cntrl": r"\x00-\x1f\x7f"}
_RUBYISMS = re.compile(r"\\.|\(\?<(?=[A-Za-z_])|\[:(\w+):\]")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise ValueError("expected text, got " + ("a hash" if isinstance(value, dict)
                                                  else "an array"))
    return str(value)


@functools.lru_cache(maxsize=256)
def regex(pattern: str) -> re.Pattern[str]:
    """Compile a Ruby-style pattern (cached); ValueError when it is invalid or too long."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"pattern longer than {MAX_PATTERN} characters")

    def translate(found: re.Match[str]) -> str:
        token = found.group(0)
        if found.group(1):
            return _POSIX.get(found.group(1), token)
        return {"(?<": "(?P<", r"\z": r"\Z", r"\Z": r"(?=\n?\Z)", r"\h": "[0-9a-fA-F]",
                r"\H": "[^0-9a-fA-F]"}.get(token, token)

    try:
        return re.compile(_RUBYISMS.sub(translate, pattern), re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


def _subject(value: Any) -> str:
    text = _text(value)
    if len(text) > MAX_REGEX_INPUT:
        raise ValueError(f"text longer than {MAX_REGEX_INPUT} characters")
    return text


class Match:
    """A regex match as Liquid sees it: prints as the whole match; `m[0]`, `m[1]`,
    `m["name"]`, `m.captures`, `m.named_captures`, `m.pre_match`, `m.post_match`."""

    __slots__ = ("_match",)

    def __init__(self, match: re.Match[str]) -> None:
        self._match = match

    def __getitem__(self, key: Any) -> Any:
        m = self._match
        if isinstance(key, int) and not isinstance(key, bool):
            if -len(m.groups()) - 1 <= key <= len(m.groups()):
                return m.group(key if key >= 0 else len(m.groups()) + 1 + key)
            raise KeyError(key)
        if key == "captures":
            return list(m.groups())
        if key == "named_captures":
            return m.groupdict()
        if key == "pre_match":
            return m.string[: m.start()]
        if key == "post_match":
            return m.string[m.end():]
        if key == "size":
            return len(m.groups()) + 1
        if isinstance(key, str) and key in m.re.groupindex:
            return m.group(key)
        raise KeyError(key)

    def __liquid__(self) -> str:
        return self._match.group(0)

    def __str__(self) -> str:
        return self._match.group(0)

    def __eq__(self, other: object) -> bool:
        return str(self) == (str(other) if isinstance(other, (str, Match)) else other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __repr__(self) -> str:
        return f"Match({str(self)!r})"


def match(value: Any, pattern: Any) -> Match | None:
    """`match: regex`: the first match (see `Match`), or nil."""
    found = regex(_text(pattern)).search(_subject(value))
    return Match(found) if found else None


#: What a kept match holds per group (its positions), in characters of the output budget.
_MATCH_HOLDS = 16


def scan(value: Any, pattern: Any, *, limit: int) -> list[Match]:
    """`scan: regex`: every match (see `Match`: each prints as the matched text; `captures` and
    `named_captures` give its groups); TooLarge once the matches and their groups would print
    (as JSON) longer than `limit` characters, counting also what each match holds in memory
    (`_MATCH_HOLDS` per group): a pattern of many groups matching short text is costly."""
    compiled = regex(_text(pattern))
    found: list[Match] = []
    total = 0
    for m in compiled.finditer(_subject(value)):
        total += len(m[0]) + 3 + _MATCH_HOLDS * (len(m.groups()) + 1) + sum(
            len(part) + 3 if part is not None else 5 for part in m.groups())
        if total > limit:
            raise sizes.TooLarge
        found.append(Match(m))
    return found


_INDENT = re.compile(r"^[ \t]*(?=\S)", re.MULTILINE)


def unindent(value: Any) -> str:
    """`unindent`: remove the indentation common to all non-blank lines (Rails' strip_heredoc)."""
    text = _text(value)
    indents = _INDENT.findall(text)
    if not indents:
        return text
    common = min(indents, key=len)
    return re.sub("^" + re.escape(common), "", text, flags=re.MULTILINE) if common else text


#: `e164` reads at most this many characters (a written number with an extension is ~30).
MAX_PHONE = 64
#: No leading `\s*`: searched at every offset, it made a long run of spaces quadratic.
_EXTENSION = re.compile(r"(?i)(?:ext\.?|x|#)\s*\d+$")


def e164(value: Any) -> str | None:
    """`e164`: a phone number as E.164 digits (8-15, without the `+`, as Mechanic writes
    them: `13124567890`) or nil.

    Numbers written with `+` or `00` keep their country code; 10 national digits (or 11
    starting with 1) are read as North American, the only country assumed without a prefix.
    """
    text = _text(value).strip()
    if len(text) > MAX_PHONE:
        return None
    text = _EXTENSION.sub("", text).rstrip()
    if not text or re.search(r"[A-Za-z]", text):
        return None
    digits = re.sub(r"\D", "", text)
    if text.startswith("00"):
        digits = digits[2:]
    elif text.startswith("+"):
        pass
    elif len(digits) == 10 and digits[0] in "23456789":
        digits = "1" + digits
    elif not (len(digits) == 11 and digits.startswith("1")):
        return None
    if 8 <= len(digits) <= 15 and digits[0] != "0":
        return digits
    return None


def split(value: Any, separator: Any = " ") -> list[str]:
    """`split`: Ruby's `String#split` (trailing empty strings dropped; `" "` splits on runs of
    whitespace; `newline` splits on `\\r?\\n`)."""
    text = _text(value)
    sep = _text(separator)
    if sep == "":
        return list(text)
    if sep == " ":
        return text.split()
    parts = re.split(r"\r?\n", text) if sep == "\n" else text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def replace(value: Any, search: Any, replacement: Any = "") -> str:
    """`replace`: every occurrence replaced (`newline` matches `\\r?\\n`)."""
    text, old, new = _text(value), _text(search), _text(replacement)
    if old == "\n":
        return re.sub(r"\r?\n", lambda _: new, text)
    return text.replace(old, new)


def newline_to_br(value: Any) -> str:
    """`newline_to_br`: `<br />` before each line break (`\\r?\\n`)."""
    return re.sub(r"\r?\n", "<br />\n", _text(value))


#: What `url_param_escape` leaves as it is: URL-safe characters, less `&` (Shopify's filter).
_PARAM_SAFE = "-_.~!*'();:@=+$,/?#[]"


def url_param_escape(value: Any) -> str:
    """`url_param_escape`: the text with URL-unsafe characters and `&` percent-encoded
    (`Health & Love` is `Health%20%26%20Love`), for a URL's query parameter."""
    return urllib.parse.quote(_text(value), safe=_PARAM_SAFE)


def handleize(value: Any) -> str:
    """`handleize` / `handle`: lower-case words joined by hyphens, as Shopify handles."""
    return re.sub(r"[^\w]+|_+", "-", _text(value).lower()).strip("-")


def pluralize(value: Any, singular: Any, plural: Any) -> str:
    """`pluralize: singular, plural`: the singular word when the number is 1."""
    try:
        one = float(_text(value)) == 1
    except ValueError:
        one = False
    return _text(singular) if one else _text(plural)
