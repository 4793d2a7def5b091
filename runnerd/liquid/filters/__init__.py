"""Mechanic's Liquid filters as pure functions (stdlib only); `render` registers them.

Each filter takes the piped value first, then the Liquid arguments (keyword arguments by
name), never mutates its inputs, and raises `ValueError`/`TypeError` with a short message on bad
input: the renderer turns that into a `RenderError` naming the filter and the line. Liquid's
undefined values arrive as None.

Limits kept here: regex subjects are capped at `text.MAX_REGEX_INPUT` characters and patterns at
`text.MAX_PATTERN` (Python's `re` cannot be interrupted mid-match); `in_groups`, `in_groups_of`
and `sample` refuse counts above `arrays.MAX_GROUPS`. Results that could outgrow the output cap
are measured before they are built (`sizes`); `gunzip` and `scan`, which cannot know theirs
beforehand, are bound to the cap and stop past it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from runnerd.liquid.filters import arrays, browser, data, dates, formats, money, sizes, text

Filter = Callable[..., Any]

#: Filters that do not depend on the configuration, by Liquid name.
PURE: dict[str, Filter] = {
    # data
    "json": data.json,
    "parse_json": data.parse_json,
    "jsonl": data.jsonl,
    "parse_jsonl": data.parse_jsonl,
    "csv": data.csv,
    "parse_csv": data.parse_csv,
    "base64_encode": data.base64_encode,
    "base64_decode": data.base64_decode,
    "base64_url_safe_encode": data.base64_url_safe_encode,
    "base64_url_safe_decode": data.base64_url_safe_decode,
    "md5": data.md5,
    "sha1": data.sha1,
    "sha256": data.sha256,
    "sha512": data.sha512,
    "hmac_sha1": data.hmac_sha1,
    "hmac_sha256": data.hmac_sha256,
    "hmac_sha512": data.hmac_sha512,
    "rsa_sha256": data.rsa_sha256,
    "rsa_sha512": data.rsa_sha512,
    "parse_xml": formats.parse_xml,
    "graphql_arguments": formats.graphql_arguments,
    "currency": money.currency,
    "browser": browser.browser,
    # deprecated aliases (Mechanic still accepts them)
    "base64": data.base64_encode,
    "decode_base64": data.base64_decode,
    "base64url": data.base64_url_safe_encode,
    "decode_base64url": data.base64_url_safe_decode,
    # text
    "match": text.match,
    "unindent": text.unindent,
    "e164": text.e164,
    "split": text.split,
    "replace": text.replace,
    "newline_to_br": text.newline_to_br,
    "url_param_escape": text.url_param_escape,
    "handleize": text.handleize,
    "handle": text.handleize,
    "pluralize": text.pluralize,
    # arrays and hashes
    "keys": arrays.keys,
    "values": arrays.values,
    "except": arrays.except_,
    "slice": arrays.slice_,
    "compact": arrays.compact,
    "concat": arrays.concat,
    "sum": arrays.sum_,
    "index_by": arrays.index_by,
    "in_groups": arrays.in_groups,
    "in_groups_of": arrays.in_groups_of,
    "push": arrays.push,
    "unshift": arrays.unshift,
    "sample": arrays.sample,
    "sort_naturally": arrays.sort_naturally,
}

plain = data.plain


def table(*, timezone: str, clock: Callable[[], float], output_cap: int) -> dict[str, Filter]:
    """Every filter by Liquid name, `date`/`parse_date` bound to `timezone` and `clock`
    (epoch seconds, read only when a template asks for "now", and by `gzip` for its header),
    `gunzip` and `scan` to `output_cap` (characters; `sizes.TooLarge` past it)."""
    tz: dt.tzinfo = dates.zone(timezone)

    def gunzip(value: Any, force_utf8: Any = True) -> str:
        return data.gunzip(value, force_utf8, limit=output_cap)

    def gzip(value: Any) -> data.Binary:
        return data.gzip(value, mtime=int(clock()))

    def scan(value: Any, pattern: Any) -> list[Any]:
        return text.scan(value, pattern, limit=output_cap)

    def date(value: Any, fmt: Any = None, **options: Any) -> Any:
        return dates.date(value, fmt, tz=tz, now=clock, options=options)

    def parse_date(value: Any, fmt: Any) -> str | None:
        return dates.parse_date(value, fmt, tz=tz)

    return {**PURE, "date": date, "parse_date": parse_date, "gunzip": gunzip, "scan": scan,
            "gzip": gzip}
