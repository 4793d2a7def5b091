"""Mechanic's filters: each as a pure function, and through the renderer (errors name them)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import hmac
from typing import Any

import pytest

from runnerd import errors
from runnerd.liquid import filters, render
from runnerd.liquid.filters import arrays, data, dates, text

NOW = 1_700_000_000.0  # Tuesday 2023-11-14T22:13:20Z
CHICAGO = dates.zone("America/Chicago")
F = filters.table(timezone="UTC", clock=lambda: NOW, output_cap=1_048_576)


def date(value: Any, fmt: Any = None, *, zone: Any = dates.UTC, **options: Any) -> Any:
    return dates.date(value, fmt, tz=zone, now=lambda: NOW, options=options)


@pytest.fixture(scope="module")
def renderer() -> render.Renderer:
    return render.Renderer(timezone="UTC", clock=lambda: NOW)


def liquid(renderer: render.Renderer, source: str, **variables: Any) -> str:
    return renderer.render_text(source, variables, name="filters")


def liquid_error(renderer: render.Renderer, source: str, **variables: Any) -> str:
    with pytest.raises(errors.RenderError) as caught:
        liquid(renderer, source, **variables)
    assert "\n" not in caught.value.message
    return caught.value.message


# --- date ------------------------------------------------------------------------------------


def test_date_documented_advance_example(renderer: render.Renderer) -> None:
    assert liquid(renderer, '{{ "2023-01-31" | date: "%F", advance: "1 year 1 month" }}') == (
        "2024-02-29")


@pytest.mark.parametrize(("value", "expected"), [
    ("now", "2023-11-14T22:13:20Z"),
    ("now + 5 days", "2023-11-19T22:13:20Z"),
    ("now - 2 weeks", "2023-10-31T22:13:20Z"),
    ("NOW + 1 hour", "2023-11-14T23:13:20Z"),
    ("today", "2023-11-14T22:13:20Z"),
    (0, "1970-01-01T00:00:00Z"),
    ("1700000000", "2023-11-14T22:13:20Z"),
    (1700000000.5, "2023-11-14T22:13:20Z"),
    ("2024-01-05", "2024-01-05T00:00:00Z"),
    ("2024-01-05T10:11:12+02:00", "2024-01-05T08:11:12Z"),
    ("2024-01-05T10:11:12.123Z", "2024-01-05T10:11:12Z"),
    ("2024-01-05 10:11:12 -0600", "2024-01-05T16:11:12Z"),
    ("2024-01-05 10:11:12 UTC", "2024-01-05T10:11:12Z"),
    ("Fri, 05 Jan 2024 10:11:12 +0000", "2024-01-05T10:11:12Z"),
    ("January 5, 2024", "2024-01-05T00:00:00Z"),
    ("2024/01/05", "2024-01-05T00:00:00Z"),
    (dt.datetime(2024, 1, 5, 1, 2, 3, tzinfo=dt.UTC), "2024-01-05T01:02:03Z"),
    (dt.date(2024, 1, 5), "2024-01-05T00:00:00Z"),
])
def test_date_inputs(value: Any, expected: str) -> None:
    assert date(value) == expected


def test_date_nil_and_empty_pass_through() -> None:
    assert date(None, "%F") is None
    assert date("", "%F") == ""


def test_date_default_format_uses_the_zone_offset() -> None:
    assert date("2000-01-01T06:00:00Z", zone=CHICAGO) == "2000-01-01T00:00:00-06:00"
    assert date("2000-07-01T05:00:00Z", zone=CHICAGO) == "2000-07-01T00:00:00-05:00"


def test_date_tz_option_overrides_the_configured_zone() -> None:
    assert date("2024-01-05T12:00:00Z", "%F %H:%M %Z", zone=CHICAGO, tz="Asia/Tokyo") == (
        "2024-01-05 21:00 JST")
    assert date("2024-01-05T12:00:00Z", zone=CHICAGO, tz="UTC") == "2024-01-05T12:00:00Z"


def test_strftime_ruby_directives() -> None:
    time = dt.datetime(2024, 3, 5, 14, 7, 9, 123456, tzinfo=CHICAGO)
    assert dates.strftime(time, "%Y-%m-%d %H:%M:%S") == "2024-03-05 14:07:09"
    assert dates.strftime(time, "%-m/%-d/%y %e|%3N|%L|%N") == "3/5/24  5|123|123|123456000"
    assert dates.strftime(time, "%I:%M %p %P %l %k") == "02:07 PM pm  2 14"
    assert dates.strftime(time, "%A %a %B %b %^B %^a %j %u %w") == (
        "Tuesday Tue March Mar MARCH TUE 065 2 2")
    assert dates.strftime(time, "%z %:z %::z %Z") == "-0600 -06:00 -06:00:00 CST"
    assert dates.strftime(time, "%F %T %D %R %s %%") == (
        "2024-03-05 14:07:09 03/05/24 14:07 1709669229 %")
    assert dates.strftime(time, "%_m %05d %G-W%V %Q") == " 3 00005 2024-W10 1709669229123"
    assert dates.strftime(time, "%c") == "Tue Mar  5 14:07:09 2024"
    assert dates.strftime(time, "%q stays") == "%q stays"


def test_date_percent_s_is_epoch_in_any_zone() -> None:
    assert date(1700000000, "%s", zone=CHICAGO) == "1700000000"


@pytest.mark.parametrize(("options", "expected"), [
    ({"beginning_of_year": True}, "2023-01-01T00:00:00"),
    ({"end_of_year": True}, "2023-12-31T23:59:59"),
    ({"beginning_of_quarter": True}, "2023-10-01T00:00:00"),
    ({"end_of_quarter": True}, "2023-12-31T23:59:59"),
    ({"beginning_of_month": True}, "2023-11-01T00:00:00"),
    ({"end_of_month": True}, "2023-11-30T23:59:59"),
    ({"beginning_of_week": "monday"}, "2023-11-13T00:00:00"),
    ({"beginning_of_week": "sunday"}, "2023-11-12T00:00:00"),
    ({"beginning_of_week": True}, "2023-11-13T00:00:00"),
    ({"end_of_week": "sunday"}, "2023-11-19T23:59:59"),
    ({"end_of_week": "tuesday"}, "2023-11-14T23:59:59"),
    ({"beginning_of_day": True}, "2023-11-14T00:00:00"),
    ({"middle_of_day": True}, "2023-11-14T12:00:00"),
    ({"end_of_day": True}, "2023-11-14T23:59:59"),
    ({"beginning_of_day": False}, "2023-11-14T22:13:20"),
    ({"advance": "1 day, 2 hours"}, "2023-11-16T00:13:20"),
    ({"advance": "-1 month"}, "2023-10-14T22:13:20"),
    ({"advance": "1 year 6 months"}, "2025-05-14T22:13:20"),
    ({"advance": "3 weeks and 30 seconds"}, "2023-12-05T22:13:50"),
    ({"beginning_of_month": True, "advance": "1 month"}, "2023-12-01T00:00:00"),
    ({"advance": "1 month", "end_of_month": True}, "2023-12-30T23:59:59"),
])
def test_date_options_in_mechanics_order(options: dict[str, Any], expected: str) -> None:
    assert date("now", "%Y-%m-%dT%H:%M:%S", **options) == expected


def test_quarter_end_in_a_short_month() -> None:
    assert date("2023-05-17", "%F", end_of_quarter=True) == "2023-06-30"


def test_advance_is_calendar_aware_across_dst() -> None:
    # 2024-03-10 is the spring-forward day in Chicago: days keep the wall clock, hours do not.
    assert date("2024-03-09T12:00:00", zone=CHICAGO, advance="1 day") == (
        "2024-03-10T12:00:00-05:00")
    assert date("2024-03-09T12:00:00", zone=CHICAGO, advance="24 hours") == (
        "2024-03-10T13:00:00-05:00")
    assert date("2024-03-10T01:30:00", zone=CHICAGO, advance="1 hour") == (
        "2024-03-10T03:30:00-05:00")


def test_month_ends_clamp() -> None:
    assert date("2023-03-31", "%F", advance="-1 month") == "2023-02-28"
    assert date("2024-01-31", "%F", advance="1 month") == "2024-02-29"


@pytest.mark.parametrize(("value", "options", "why"), [
    ("now", {"advance": "1 fortnight"}, "amount of time"),
    ("now", {"advance": "soon"}, "amount of time"),
    ("now", {"advance": "1.5 months"}, "whole numbers"),
    ("now", {"tz": "Nowhere/Else"}, "unknown time zone"),
    ("now", {"beginning_of_week": "funday"}, "unknown weekday"),
    ("now", {"bogus": True}, "unknown option"),
    ("now + eventually", {}, "amount of time"),
    (10**20, {}, "out of range"),
    ("9999-12-31", {"advance": "1 year"}, "out of range"),
])
def test_date_bad_input(value: Any, options: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        date(value, "%F", **options)


def test_date_errors_through_the_renderer(renderer: render.Renderer) -> None:
    assert liquid_error(renderer, '{{ "now" | date: "%F", advance: "soon" }}').startswith(
        "line 1: filter 'date': cannot read an amount of time")


@pytest.mark.parametrize("value", ["not a date", "garbage", True, "31/31/2024"])
def test_date_passes_what_it_cannot_read_through(value: Any) -> None:
    # Shopify's date filter returns what it cannot read unchanged; Mechanic's too
    assert date(value, "%F") == value
    assert date(value, "%F", tz="UTC", advance="1 day") == value


@pytest.mark.parametrize(("value", "expected"), [
    ("12/31/2024", "2024-12-31T00:00:00-06:00"),
    ("06-12-2026", "2026-12-06T00:00:00-06:00"),  # what `date: "%d-%m-%Y"` writes
    ("2000 Jan 01 00:00:00 UTC", "1999-12-31T18:00:00-06:00"),
    ("31.01.2024 13:05", "2024-01-31T13:05:00-06:00"),
    ("January 5, 2024 3:04 PM", "2024-01-05T15:04:00-06:00"),
    ("Fri Jan 05 2024", "2024-01-05T00:00:00-06:00"),
])
def test_date_reads_what_mechanics_parser_reads(value: str, expected: str) -> None:
    assert date(value, zone=CHICAGO) == expected


def test_date_tz_converts_from_the_task_zone() -> None:
    # Mechanic's docs, in America/Chicago: "2000-01-01" | date: tz: "UTC"
    assert date("2000-01-01", zone=CHICAGO, tz="UTC") == "2000-01-01T06:00:00Z"
    assert date("2000-01-01T00:00:00Z", zone=CHICAGO, tz="Asia/Tokyo") == (
        "2000-01-01T09:00:00+09:00")
    assert date("2000-01-01", "%F", zone=CHICAGO, tz="UTC", beginning_of_day=True) == (
        "2000-01-01")


def test_parse_date() -> None:
    assert dates.parse_date("05/01/2024", "%m/%d/%Y", tz=CHICAGO) == "2024-05-01T00:00:00-05:00"
    assert dates.parse_date("2024-05-01 13:14 +0200", "%Y-%m-%d %H:%M %z", tz=dates.UTC) == (
        "2024-05-01T11:14:00Z")
    assert dates.parse_date("5 Jan 2024", "%-d %b %Y", tz=dates.UTC) == "2024-01-05T00:00:00Z"
    assert dates.parse_date("nope", "%Y", tz=dates.UTC) is None
    assert dates.parse_date(None, "%Y", tz=dates.UTC) is None
    assert dates.parse_date("2024", None, tz=dates.UTC) is None


# --- JSON, CSV ---------------------------------------------------------------------------------


def test_json_and_parse_json() -> None:
    value = {"a": [1, 2.5, None, True], "é": "<b>", 3: (1, 2)}
    assert data.json(value) == '{"a":[1,2.5,null,true],"é":"<b>","3":[1,2]}'
    assert data.parse_json(data.json(value)) == {"a": [1, 2.5, None, True], "é": "<b>",
                                                 "3": [1, 2]}
    assert data.json(range(3)) == "[0,1,2]"
    assert data.json(dt.date(2024, 1, 5)) == '"2024-01-05"'


def test_parse_json_errors_unless_silent() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        data.parse_json("{nope")
    with pytest.raises(ValueError, match="expected JSON text"):
        data.parse_json(None)
    assert data.parse_json("{nope", silent=True) is None
    assert data.parse_json(None, silent=True) is None


def test_json_rejects_nan() -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        data.json(float("nan"))


def test_json_through_liquid_handles_undefined_and_matches(renderer: render.Renderer) -> None:
    source = ('{{ nothing | json }} {{ "a-1" | match: "\\d" | json }} '
              '{{ "x" | parse_json: silent: true | json }}')
    assert liquid(renderer, source) == 'null "1" null'


def test_jsonl() -> None:
    assert data.jsonl([{"a": 1}, [2], "x"]) == '{"a":1}\n[2]\n"x"'
    assert data.parse_jsonl('{"a":1}\n\n[2]\r\n"x"\n') == [{"a": 1}, [2], "x"]
    with pytest.raises(ValueError, match="line 2"):
        data.parse_jsonl('1\n{bad\n')
    with pytest.raises(ValueError, match="expected an array"):
        data.jsonl({"a": 1})
    with pytest.raises(ValueError, match="expected JSON lines"):
        data.parse_jsonl(5)


def test_csv() -> None:
    rows = [["name", "note", "n", "empty", "nil"], ["Ada", 'says "hi", then\nleaves', 1.5, "",
                                                  None], [True, False]]
    assert data.csv(rows) == (
        'name,note,n,empty,nil\nAda,"says ""hi"", then\nleaves",1.5,"",\ntrue,false\n')
    assert data.csv([["a;b", "c"]], delimiter=";", include_bom=True) == '\ufeff"a;b";c\n'
    assert data.csv([]) == ""


@pytest.mark.parametrize(("value", "kwargs", "why"), [
    ("text", {}, "array of arrays"),
    (["a", "b"], {}, "row that is a string"),
    ([["a"]], {"delimiter": ";;"}, "one character"),
])
def test_csv_bad_input(value: Any, kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        data.csv(value, **kwargs)


def test_parse_csv() -> None:
    source = '\ufeffname,note\r\nAda,"multi\nline"\nBob\n\n'
    assert data.parse_csv(source) == [["name", "note"], ["Ada", "multi\nline"], ["Bob"]]
    assert data.parse_csv(source, headers=True) == [
        {"name": "Ada", "note": "multi\nline"}, {"name": "Bob", "note": None}]
    assert data.parse_csv("a;b\n1;2", headers=True, delimiter=";") == [{"a": "1", "b": "2"}]
    assert data.parse_csv("", headers=True) == []
    round_trip = [["a", 'b"c', "d,e"]]
    assert data.parse_csv(data.csv(round_trip)) == round_trip


def test_parse_csv_bad_input() -> None:
    with pytest.raises(ValueError, match="invalid CSV"):
        data.parse_csv('a,"unterminated\n')
    with pytest.raises(ValueError, match="expected CSV text"):
        data.parse_csv(["a"])


# --- encodings, digests ------------------------------------------------------------------------


def test_base64_family_and_aliases() -> None:
    assert F["base64_encode"]("héllo?") == base64.b64encode("héllo?".encode()).decode()
    assert F["base64"] is F["base64_encode"]
    assert F["base64_decode"]("aMOpbGxvPw==") == "héllo?"
    assert F["decode_base64"]("aMOpbGxvPw") == "héllo?"  # padding is optional
    assert F["base64_url_safe_encode"]("???>>>") == "Pz8_Pj4-"
    assert F["base64url"]("???>>>") == "Pz8_Pj4-"
    assert F["base64_url_safe_decode"]("Pz8_Pj4-") == "???>>>"
    assert F["decode_base64url"]("Pz8_Pj4-") == "???>>>"
    assert F["base64_encode"](None) == ""
    assert F["base64_encode"](12) == "MTI="


@pytest.mark.parametrize("name", ["base64_decode", "base64_url_safe_decode"])
def test_base64_decode_rejects_garbage(name: str) -> None:
    with pytest.raises(ValueError, match="invalid base64"):
        F[name]("not*base64!")


def test_base64_encode_rejects_structures(renderer: render.Renderer) -> None:
    message = liquid_error(renderer, "{{ event | base64_encode }}", event={"a": 1})
    assert message == "line 1: filter 'base64_encode': expected text, got a hash"


def test_gzip_round_trip() -> None:
    packed = data.gzip("hello " * 50, mtime=1_602_099_996)
    assert isinstance(packed, data.Binary)  # binary, as in Ruby: `gzip | base64` is base64
    raw = packed.encode("latin-1")
    assert gzip.decompress(raw) == ("hello " * 50).encode()
    assert raw[4:8] == (1_602_099_996).to_bytes(4, "little") and raw[9] == 3  # mtime, Unix
    assert data.gunzip(packed, limit=10_000) == "hello " * 50
    assert data.gunzip(packed, force_utf8=False, limit=10_000) == "hello " * 50
    assert data.gunzip(base64.b64encode(raw).decode(), limit=10_000) == "hello " * 50
    with pytest.raises(ValueError, match="not gzip data"):
        data.gunzip(base64.b64encode(b"plain").decode(), limit=10_000)
    latin = base64.b64encode(gzip.compress(b"\xe9t\xe9")).decode()
    assert data.gunzip(latin, limit=10_000) == "\ufffdt\ufffd"
    kept = data.gunzip(latin, force_utf8=False, limit=10_000)
    assert isinstance(kept, data.Binary) and kept.encode("latin-1") == b"\xe9t\xe9"


def test_binary_strings_keep_their_bytes() -> None:
    binary = data.base64_decode(base64.b64encode(b"\xff\x00\xe9").decode(), force_utf8=False)
    assert isinstance(binary, data.Binary)
    assert data.base64_encode(binary) == base64.b64encode(b"\xff\x00\xe9").decode()
    assert data.md5(binary) == hashlib.md5(b"\xff\x00\xe9").hexdigest()
    assert data.base64_decode("aMOp", force_utf8=False) == "hé"  # UTF-8 stays text
    assert data.base64_decode(base64.b64encode(b"\xff").decode()) == "\ufffd"


@pytest.mark.parametrize("name", ["md5", "sha1", "sha256", "sha512"])
def test_digests(name: str) -> None:
    assert F[name]("abc") == hashlib.new(name, b"abc").hexdigest()


@pytest.mark.parametrize("name", ["sha1", "sha256", "sha512"])
def test_hmacs(name: str) -> None:
    assert F[f"hmac_{name}"]("msg", "key") == hmac.new(b"key", b"msg", name).hexdigest()
    with pytest.raises(ValueError, match="missing key"):
        F[f"hmac_{name}"]("msg", None)


def test_url_encode_and_decode(renderer: render.Renderer) -> None:
    assert liquid(renderer, '{{ "a b&c/é" | url_encode }}') == "a+b%26c%2F%C3%A9"
    assert liquid(renderer, '{{ "a+b%26c" | url_decode }}') == "a b&c"


# --- text ------------------------------------------------------------------------------------


def test_match(renderer: render.Renderer) -> None:
    found = text.match("Order #1001-XL shipped", r"#(?<number>\d+)-(\w+)")
    assert found is not None
    assert str(found) == "#1001-XL"
    assert found["captures"] == ["1001", "XL"]
    assert found["named_captures"] == {"number": "1001"}
    assert (found[0], found[1], found["number"], found[-1]) == ("#1001-XL", "1001", "1001", "XL")
    assert (found["pre_match"], found["post_match"]) == ("Order ", " shipped")
    assert text.match("nothing here", r"\d") is None
    source = ('{% assign m = "v2.10" | match: "v(\\d+)\\.(\\d+)" %}'
              '{{ m }} {{ m[1] }} {{ m.captures | join: "," }} {% if m == "v2.10" %}eq{% endif %}')
    assert liquid(renderer, source) == "v2.10 2 2,10 eq"


def test_regexes_read_ruby_syntax() -> None:
    # ^ is a line anchor, as in Ruby
    assert text.scan("ab\ncd", r"^\w", limit=10**6) == ["a", "c"]
    assert text.match("abc\n", r"c\z") is None
    assert text.match("abc\n", r"c\Z") is not None
    assert text.scan("x1F y9", r"\h\h", limit=10**6) == ["1F"]
    assert text.scan("a1 B2", r"[[:alpha:]][[:digit:]]", limit=10**6) == ["a1", "B2"]


def test_scan() -> None:
    assert text.scan("a1 b22 c333", r"\d+", limit=10**6) == ["1", "22", "333"]
    found = text.scan("k=v; x=y", r"(\w)=(?<b>\w)", limit=10**6)
    assert found == ["k=v", "x=y"]  # matches print as the matched text (Mechanic's docs)
    assert [m["captures"] for m in found] == [["k", "v"], ["x", "y"]]
    assert [m["named_captures"] for m in found] == [{"b": "v"}, {"b": "y"}]
    assert text.scan(None, r"\d", limit=10**6) == []


def test_regex_guards() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        text.match("x", "(")
    with pytest.raises(ValueError, match="longer than"):
        text.scan("a" * (text.MAX_REGEX_INPUT + 1), "a", limit=10**6)
    with pytest.raises(ValueError, match="pattern longer"):
        text.match("a", "a" * (text.MAX_PATTERN + 1))


def test_regex_errors_through_the_renderer(renderer: render.Renderer) -> None:
    assert liquid_error(renderer, '{{ "x" | scan: "(" }}').startswith(
        "line 1: filter 'scan': invalid regular expression")


def test_unindent() -> None:
    assert text.unindent("    a\n      b\n\n    c\n") == "a\n  b\n\nc\n"
    assert text.unindent("\tx\n\ty") == "x\ny"
    assert text.unindent("flush\n  indented") == "flush\n  indented"
    assert text.unindent("   ") == "   "


@pytest.mark.parametrize(("value", "expected"), [
    ("(555) 123-4567", "15551234567"),
    ("1-555-123-4567", "15551234567"),
    ("+44 20 7946 0958", "442079460958"),
    ("0044 20 7946 0958", "442079460958"),
    ("+1 555 123 4567 ext. 89", "15551234567"),
    (5551234567, "15551234567"),
    ("123", None),
    ("555-CALL-NOW", None),
    ("", None),
    (None, None),
    ("+0123456789", None),
])
def test_e164(value: Any, expected: str | None) -> None:
    assert text.e164(value) == expected


def test_split_replace_and_newline_rules() -> None:
    assert text.split("a,b,,c,,", ",") == ["a", "b", "", "c"]
    assert text.split("  a  b ", " ") == ["a", "b"]
    assert text.split("abc", "") == ["a", "b", "c"]
    assert text.split("a\r\nb\nc\n", "\n") == ["a", "b", "c"]
    assert text.split("", ",") == []
    assert text.replace("a\r\nb\nc", "\n", "|") == "a|b|c"
    assert text.replace("aaa", "a", "b") == "bbb"
    assert text.newline_to_br("a\r\nb\nc") == "a<br />\nb<br />\nc"


def test_handleize_and_pluralize() -> None:
    assert text.handleize("  Hello, World! 2024_edition ") == "hello-world-2024-edition"
    assert F["handle"]("Ünïcode Café") == "ünïcode-café"
    assert text.pluralize(1, "item", "items") == "item"
    assert text.pluralize("3", "item", "items") == "items"
    assert text.pluralize(None, "item", "items") == "items"


# --- arrays and hashes -----------------------------------------------------------------------


def test_keys_values_except_slice_on_hashes() -> None:
    h = {"a": 1, "b": None, "c": 3}
    assert arrays.keys(h) == ["a", "b", "c"]
    assert arrays.values(h) == [1, None, 3]
    assert arrays.except_(h, "a", "c") == {"b": None}
    assert arrays.slice_(h, "a", "c", "zzz") == {"a": 1, "c": 3}
    assert arrays.compact(h) == {"a": 1, "c": 3}
    assert h == {"a": 1, "b": None, "c": 3}
    for fn in (arrays.keys, arrays.values):
        with pytest.raises(ValueError, match="expected a hash"):
            fn([1])


def test_slice_on_arrays_and_strings() -> None:
    assert arrays.slice_([1, 2, 3, 4], 1) == [2]
    assert arrays.slice_([1, 2, 3, 4], 1, 2) == [2, 3]
    assert arrays.slice_([1, 2, 3, 4], -2, 5) == [3, 4]
    assert arrays.slice_("Liquid", 0) == "L"
    assert arrays.slice_("Liquid", 2, 5) == "quid"
    assert arrays.slice_("Liquid", -3, 2) == "ui"
    assert arrays.slice_("Liquid", 10) == ""
    assert arrays.slice_((1, 2), 0, 1) == [1]
    with pytest.raises(ValueError, match="start must be an integer"):
        arrays.slice_("abc", "x")
    with pytest.raises(ValueError, match="expected a start"):
        arrays.slice_("abc")


def test_except_and_compact_on_arrays() -> None:
    assert arrays.except_([1, 2, 3, 2], 2) == [1, 3]
    assert arrays.compact([1, None, 2]) == [1, 2]
    assert arrays.compact([{"a": 1}, {"a": None}, {}], "a") == [{"a": 1}]
    with pytest.raises(ValueError, match="hash or an array"):
        arrays.except_("text", "t")


def test_sum() -> None:
    assert arrays.sum_([1, 2.5, None, 3]) == 6.5
    assert arrays.sum_([{"n": 1}, {"n": 2}, {}], "n") == 3
    assert arrays.sum_([]) == 0
    with pytest.raises(ValueError, match="only sum numbers"):
        arrays.sum_([1, "2"])
    with pytest.raises(ValueError, match="expected an array"):
        arrays.sum_("12")


def test_index_by() -> None:
    items = [{"id": 1, "n": "a"}, {"id": 2, "n": "b"}, {"n": "c"}]
    assert arrays.index_by(items, "id") == {1: items[0], 2: items[1], None: items[2]}
    with pytest.raises(ValueError, match="array of hashes"):
        arrays.index_by([1], "id")


def test_in_groups_and_in_groups_of() -> None:
    assert arrays.in_groups_of([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5, None]]
    assert arrays.in_groups_of([1, 2, 3, 4, 5], 2, fill_with=False) == [[1, 2], [3, 4], [5]]
    assert arrays.in_groups_of([1, 2, 3], 2, fill_with="x") == [[1, 2], [3, "x"]]
    assert arrays.in_groups_of([], 3) == []
    assert arrays.in_groups([1, 2, 3, 4, 5, 6, 7], 3) == [[1, 2, 3], [4, 5, None], [6, 7, None]]
    assert arrays.in_groups([1, 2, 3, 4, 5, 6, 7], 3, fill_with=False) == [
        [1, 2, 3], [4, 5], [6, 7]]
    assert arrays.in_groups([1, 2], 3) == [[1], [2], [None]]
    for bad in (0, -1, "x", arrays.MAX_GROUPS + 1, None):
        with pytest.raises(ValueError, match="must be"):
            arrays.in_groups_of([1], bad)
        with pytest.raises(ValueError, match="must be"):
            arrays.in_groups([1], bad)


def test_push_unshift_do_not_mutate() -> None:
    items = [1, 2]
    assert arrays.push(items, 3, 4) == [1, 2, 3, 4]
    assert arrays.unshift(items, 0) == [0, 1, 2]
    assert arrays.push(None, 1) == [1]
    assert items == [1, 2]
    with pytest.raises(ValueError, match="expected an array"):
        arrays.push({"a": 1}, 2)


def test_sample() -> None:
    items = [1, 2, 3]
    assert arrays.sample(items) in items
    assert sorted(arrays.sample(items, 2)) in ([1, 2], [1, 3], [2, 3])
    assert sorted(arrays.sample(items, 10)) == [1, 2, 3]
    assert arrays.sample([]) is None
    with pytest.raises(ValueError, match="sample size"):
        arrays.sample(items, 0)


def test_sort_naturally() -> None:
    assert arrays.sort_naturally(["a10", "a2", "B1", "a1b", None]) == [
        None, "B1", "a1b", "a2", "a10"]  # case-sensitive, as the `naturally` gem
    rows = [{"n": "x10"}, {"n": "x9"}, {}]
    assert arrays.sort_naturally(rows, "n") == [{}, {"n": "x9"}, {"n": "x10"}]


def test_standard_filters_still_work(renderer: render.Renderer) -> None:
    source = ('{{ "  Hi " | strip | upcase | append: "!" }} {{ 7 | divided_by: 2 }} '
              '{{ list | map: "n" | join: "," }} {{ list | where: "n", 2 | size }} '
              '{{ nothing | default: "dflt" }}')
    assert liquid(renderer, source, list=[{"n": 1}, {"n": 2}]) == "HI! 3 1,2 1 dflt"


def test_every_documented_filter_is_registered() -> None:
    documented = """date json parse_json jsonl parse_jsonl csv parse_csv base64_encode
    base64_decode base64_url_safe_encode base64_url_safe_decode md5 sha1 sha256 sha512 hmac_sha1
    hmac_sha256 hmac_sha512 match scan unindent keys values except slice compact sum index_by
    in_groups in_groups_of push unshift sample sort_naturally parse_date gzip gunzip e164 base64
    decode_base64 base64url decode_base64url""".split()
    assert set(documented) <= set(F)


@pytest.mark.parametrize("source", [
    "{{ 1 | keys }}", "{{ 1 | values }}", '{{ "a" | in_groups_of: 0 }}', "{{ 1 | sum }}",
    "{{ 1 | index_by: 'a' }}", "{{ 1 | push: 2 }}", "{{ 1 | unshift: 2 }}", "{{ 1 | sample }}",
    "{{ 1 | sort_naturally }}", "{{ 'x' | gunzip }}", "{{ 1 | parse_jsonl }}",
    "{{ 1 | jsonl }}", "{{ 1 | csv }}", "{{ 1 | parse_csv }}", "{{ 'x' | hmac_sha256 }}",
    "{{ 'a' | slice }}", "{{ 'a' | except: 1 }}", "{{ 'x' | date: '%F', tz: 'Nope/Nope' }}",
    "{{ 'x' | match: '[' }}", "{{ 'x' | json: 1, 2 }}",
])
def test_bad_input_is_a_render_error_naming_the_filter(renderer: render.Renderer,
                                                       source: str) -> None:
    name = source.split("|")[1].split(":")[0].strip().rstrip("}").strip()
    assert f"filter {name!r}" in liquid_error(renderer, source)
