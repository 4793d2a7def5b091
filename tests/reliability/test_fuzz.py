"""Bad input, everywhere: hypothesis throws random webhook requests, raw bytes, configuration files,
Liquid sources, command lines and action options at runnerd. Each answer is the documented one or
a clear one-line error: never a crash, a traceback, or an event stored for a refused request.

One daemon serves the whole module (module-scoped); every loop is bounded by `max_examples`.
Under CI=true the examples are derandomized, so a CI failure replays. RUNNERD_FUZZ_SCALE=10 tries
ten times as many (a longer hunt; `--hypothesis-show-statistics` shows what was tried).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import hmac
import http.client
import io
import json
import logging
import os
import socket
import string
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from runnerd import cli, config, daemon, errors, models
from runnerd.actions import cache as cache_action
from runnerd.actions import echo, email, event
from runnerd.actions import http as http_action
from runnerd.liquid import render

from ..conftest import Daemon, wait_until
from ..helpers_servers import context, refused_port

#: Cases tried per test, checked at the end of each (a fuzz test that tried nothing fails).
TRIED: Counter[str] = Counter()


SCALE = float(os.environ.get("RUNNERD_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(max_examples=int(examples * SCALE), deadline=None, database=None,
                    derandomize=os.environ.get("CI") == "true",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


Test = TypeVar("Test", bound=Callable[..., Any])


def examples(values: list[Any]) -> Callable[[Test], Test]:
    """Decorate with `hypothesis.example` once per value."""
    def decorate(test: Test) -> Test:
        for value in reversed(values):
            test = example(value)(test)
        return test

    return decorate


def one_line(text: str) -> bool:
    return bool(text.strip()) and "\n" not in text.strip() and "Traceback" not in text


# --- values -----------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=16)


# --- webhooks, against one real daemon --------------------------------------------------------

LIMIT = 65_536
SECRET = "fuzz-secret"
HOOKS = {"auto": "user/fuzz/auto", "full": "user/fuzz/full", "signed": "user/fuzz/signed"}
CONFIG = f"""
webhooks:
  - {{name: auto, topic: user/fuzz/auto}}
  - {{name: full, topic: user/fuzz/full, mode: full}}
  - {{name: signed, topic: user/fuzz/signed, secret: {SECRET}, tolerance: 60}}
tasks:
  - name: Reader
    subscriptions: |
      user/fuzz/auto
      user/fuzz/full
      user/fuzz/signed
    code: |
      {{% assign text = event.data | json %}}
      {{% log text.size, event.data.size, event.data.headers["x-fuzz"] %}}
      {{% for pair in event.data limit: 5 %}}{{% log pair %}}{{% endfor %}}
"""


class FuzzDaemon(Daemon):
    """The conftest daemon with a small body limit (the fixture's head sets `listen`)."""

    def write_config(self, body: str) -> None:
        super().write_config(body)
        self.config.write_text(self.config.read_text().replace(
            "}\n", f", max_body_bytes: {LIMIT}}}\n", 1))


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = FuzzDaemon(tmp_path_factory.mktemp("fuzz"), CONFIG).start()
    try:
        yield d
        assert d.proc is not None and d.proc.poll() is None, d.logs()
        assert d.stop() == 0, d.logs()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


class Client:
    """One keep-alive connection to the daemon, reopened when the daemon closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def send(self, method: str, target: str, body: bytes, headers: dict[str, str]
             ) -> tuple[int, http.client.HTTPResponse, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                self.conn.putrequest(method, target, skip_accept_encoding=True)
                for name, value in headers.items():
                    self.conn.putheader(name, value)
                self.conn.putheader("Content-Length", str(len(body)))
                self.conn.endheaders(body)
                resp = self.conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, resp, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def deep(n: int, opening: bytes, closing: bytes) -> bytes:
    return opening * n + b"1" * (opening == b'{"a":') + closing * n


bodies = st.one_of(
    st.binary(max_size=2048),
    values.map(lambda v: json.dumps(v).encode()),  # NaN and Infinity included
    st.tuples(values, st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"])).map(
        lambda p: json.dumps(p[0], ensure_ascii=False).encode(p[1], "replace")),
    st.integers(1, 250_000).flatmap(lambda n: st.sampled_from(
        [deep(n, b"[", b"]"), deep(min(n, 10_000), b'{"a":', b"}")])),
    st.integers(LIMIT - 2, LIMIT + 2).map(lambda n: b"a" * n),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=6).map(
        lambda pairs: urllib.parse.urlencode(pairs).encode()),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "application/json; charset=utf-16",
                     "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; "
                     "charset=latin-1", "text/plain; charset=bogus", "multipart/form-data; "
                     "boundary=zz", "multipart/form-data", "", ";;;", "a/b; c"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff,
                                    blacklist_characters="\x7f"), max_size=60)
header_names = st.one_of(
    st.sampled_from(["Authorization", "Cookie", "User-Agent", "Accept", "X-Fuzz",
                     "X-Forwarded-For", "Accept-Charset"]),
    st.text(string.ascii_letters + string.digits + "-!#$%&'*+.^_`|~", min_size=1,
            max_size=20).map(lambda n: "X-" + n),
)
queries = st.one_of(
    st.just(""),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=6).map(
        urllib.parse.urlencode),
    st.text(string.ascii_letters + string.digits + "%&=;+?/[]@!$'()*,-._~", max_size=60),
)
names = st.one_of(st.sampled_from(sorted(HOOKS)), st.text(max_size=20).filter(
    lambda n: n not in HOOKS))


@st.composite
def webhook_requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(bodies)
    encoding = draw(st.sampled_from([None] * 8 + ["gzip", "bad-gzip", "deflate"]))
    decoded = body
    headers = draw(st.dictionaries(header_names, header_text, max_size=5))
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "bad-gzip":
        body, decoded = b"\x1f\x8b not gzip " + body[:100], None
    if encoding is not None:
        headers["Content-Encoding"] = "deflate" if encoding == "deflate" else "gzip"
    name = draw(names)
    signature = draw(st.sampled_from(["good", "good", "wrong", "none", "fresh", "stale",
                                      "unsigned-ts", "junk-ts"]))
    now = time.time()
    stamp = {"fresh": str(int(now)), "stale": str(int(now) - 3600), "unsigned-ts": str(int(now)),
             "junk-ts": draw(header_text)}.get(signature)
    if signature != "none" and decoded is not None:
        signed = decoded if stamp is None or signature == "unsigned-ts" else (
            stamp.encode("latin-1") + b"." + decoded)
        key = SECRET if signature != "wrong" else "not-the-secret"
        headers["X-Runnerd-Signature"] = "sha256=" + hmac.new(
            key.encode(), signed, hashlib.sha256).hexdigest()
    if stamp is not None:
        headers["X-Runnerd-Timestamp"] = stamp
    return {"method": draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH"])),
            "name": name, "query": draw(queries), "headers": headers, "body": body,
            "decoded": decoded, "signature": signature, "stamp": stamp}


def request(body: bytes = b"{}", **fields: Any) -> dict[str, Any]:
    """One explicit webhook request (an `example` every run tries, whatever is generated)."""
    return {"method": "POST", "name": "auto", "query": "", "headers": {}, "body": body,
            "decoded": body, "signature": "none", "stamp": None, **fields}


#: One request per refusal, so that every run sees each status at least once.
EXAMPLES = [
    request(),
    request(b"a" * (LIMIT + 1)),
    request(gzip.compress(b"\0" * LIMIT * 20), decoded=b"\0" * LIMIT * 20,
            headers={"Content-Encoding": "gzip"}),  # a gzip bomb
    request(b"\x1f\x8b not gzip", decoded=None, headers={"Content-Encoding": "gzip"}),
    request(name="signed"),
    request(method="GET"),
    request(name="nope"),
]


def expected_status(req: dict[str, Any]) -> set[int]:
    if req["name"] not in HOOKS:
        return {404}
    if req["method"] != "POST":
        return {405}
    if req["decoded"] is None:
        return {400}
    if len(req["decoded"]) > LIMIT:
        return {413}
    if req["name"] == "signed":
        if req["signature"] in ("wrong", "none", "stale", "unsigned-ts"):
            return {401}
        if req["signature"] == "junk-ts":
            stamp = req["stamp"].strip()
            try:
                fresh = abs(float(stamp) - time.time()) <= 60
            except ValueError:
                fresh = False
            return {204, 401} if fresh else {401}
    return {204}


def fuzz_events(d: Daemon) -> int:
    return int(d.query("SELECT COUNT(*) FROM events WHERE topic LIKE 'user/fuzz/%'")[0][0])


def test_webhook_requests_get_their_documented_answer_and_refusals_store_nothing(
        hooks: Daemon) -> None:
    client = Client(hooks.port)

    @fuzz(250)
    @given(webhook_requests())
    @examples(EXAMPLES)
    def check(req: dict[str, Any]) -> None:
        TRIED["webhook"] += 1
        before = fuzz_events(hooks)
        target = "/webhooks/" + urllib.parse.quote(req["name"], safe="")
        if req["query"]:
            target += "?" + req["query"]
        status, resp, data = client.send(req["method"], target, req["body"], req["headers"])
        note(f"status {status}")
        TRIED[f"webhook {status}"] += 1
        assert status in expected_status(req), (status, data[:300])
        after = fuzz_events(hooks)
        if status == 204:
            request_id = resp.headers["X-Request-Id"]
            assert data == b"" and after == before + 1
            stored = hooks.query("SELECT data FROM events WHERE webhook_request_id = ?",
                                 (request_id,))
            assert len(stored) == 1
            json.loads(stored[0][0])  # the JSON column holds JSON
        else:
            assert after == before, f"{status} answered but an event was stored"
            assert one_line(data.decode("utf-8", "replace")), data[:300]

    try:
        check()
    finally:
        client.close()
    assert TRIED["webhook"] >= 250
    assert all(TRIED[f"webhook {code}"] for code in (204, 400, 401, 404, 405, 413)), TRIED
    # Every accepted event went through its task run; none crashed the worker.
    wait_until(lambda: hooks.query("SELECT COUNT(*) FROM runs WHERE state NOT IN "
                                   "('succeeded', 'failed')")[0][0] == 0, timeout=30)
    crashed = hooks.query("SELECT id, error FROM runs WHERE error LIKE 'internal error%'")
    assert not crashed, [tuple(r) for r in crashed]
    for (error,) in hooks.query("SELECT error FROM runs WHERE error IS NOT NULL"):
        assert one_line(error), error
    assert "Traceback" not in hooks.logs() and "ERROR" not in hooks.logs(), hooks.logs()[-3000:]


raw_requests = st.one_of(
    st.binary(min_size=1, max_size=600),
    st.lists(st.sampled_from([b"POST /webhooks/auto HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n",
                              b"Host: x\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n",
                              b"Transfer-Encoding: chunked\r\n", b"\r\n", b"zz\r\n", b"0\r\n",
                              b"X: \x00\xff\r\n", b"Content-Encoding: br\r\n", b"hello",
                              b"Expect: 100-continue\r\n", b" folded\r\n"]),
             min_size=1, max_size=12).map(b"".join),
)


def test_raw_bytes_on_the_socket_get_an_answer_or_a_close_never_a_traceback(
        hooks: Daemon) -> None:
    @fuzz(150)
    @given(raw_requests)
    def check(raw: bytes) -> None:
        TRIED["raw"] += 1
        before = fuzz_events(hooks)
        with socket.create_connection(("127.0.0.1", hooks.port), timeout=10) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
        if answer:
            assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:200]
            assert b"Traceback" not in answer
        if b" 204 " not in answer.split(b"\r\n", 1)[0]:
            assert fuzz_events(hooks) == before

    check()
    assert TRIED["raw"] >= 150
    assert "Traceback" not in hooks.logs(), hooks.logs()[-3000:]


# --- configuration files --------------------------------------------------------------------

plausible = {
    "database": st.sampled_from(["x.db", "", "sub/x.db"]),
    "timezone": st.sampled_from(["UTC", "Europe/Paris", "America", "Mars/Base", "", "a" * 300,
                                 "x\x00"]),
    "admin_token": st.sampled_from(["t", "${TOKEN}", "${MISSING}", "$"]),
    "concurrency": st.integers(-3, 100),
    "shutdown_grace": st.sampled_from(["10s", "1x", "-1", 3, "1e999"]),
    "listen": st.fixed_dictionaries({}, optional={
        "host": st.sampled_from(["127.0.0.1", "::1", ""]), "port": st.integers(-1, 70_000),
        "max_body_bytes": st.integers(-1, 10**12)}),
    "limits": st.fixed_dictionaries({}, optional={
        "loop_iterations": st.integers(-1, 10**9), "render_seconds": st.sampled_from(
            ["1s", "0", 5, "forever", -1]), "nesting": st.integers(-1, 10**6)}),
    "email": st.fixed_dictionaries({}, optional={
        "transport": st.sampled_from(["smtp", "outbox", "pigeon"]),
        "from": st.sampled_from(["a@b.c", "nope", ""]),
        "smtp": st.fixed_dictionaries({}, optional={
            "port": st.integers(-1, 70_000), "starttls": st.sampled_from(["auto", "maybe"]),
            "timeout": st.sampled_from(["30s", "x", 0])})}),
    "webhooks": st.lists(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["orders", "a b", "", "x" * 80]),
        "topic": st.sampled_from(["user/a/b", "mechanic/a/b", "runnerd/monitors/down", "a/b",
                                  "user/A/b"]),
        "mode": st.sampled_from(["auto", "full", "half"]),
        "secret": st.sampled_from(["s", "", "${TOKEN}"]),
        "tolerance": st.sampled_from(["5m", "x", -1, 0])}), max_size=3),
    "monitors": st.lists(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["backup", "a b"]), "task": st.sampled_from(["T", "none"]),
        "period": st.sampled_from(["1h", "x", 0]), "grace": st.sampled_from(["5m", "y"]),
        "schedule": st.sampled_from(["0 3 * * *", "61 * * * *", "* *", "*/0 * * * *",
                                     "0 0 31 2 *", "a b c d e"])}), max_size=3),
    "tasks": st.lists(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["T", "U", "", "T"]),
        "code": st.sampled_from(["{% log 1 %}", "{% if %}", "{{ x | nope }}",
                                 "{% for i in (1..3) %}{% endfor", "{% action %}{% endaction %}",
                                 "{{ options.a__number_required }}"]),
        "code_file": st.sampled_from(["task.liquid", "missing.liquid", "", ".", "sub"]),
        "subscriptions": st.sampled_from(["user/a/b", "user/a/b+1.hour", "mechanic/scheduler/7min",
                                          "x", "{% if %}", "user/a/b+1.fortnight"]),
        "options": st.dictionaries(st.sampled_from(["a", "a__number", "b__boolean",
                                                    "c__email_required", "d__range_min0_max9"]),
                                   scalars, max_size=3),
        "enabled": st.sampled_from([True, "yes", None]),
        "preview_events": st.lists(values, max_size=2)}), max_size=3),
    "tasks_dir": st.sampled_from(["sub", "missing", "task.liquid"]),
}
top_keys = st.sampled_from(sorted(plausible)) | st.text(max_size=10)


@st.composite
def config_documents(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(values)  # any YAML value at the top
    doc: dict[Any, Any] = {}
    for key in draw(st.lists(top_keys, max_size=8)):
        strategy = plausible.get(key, values) if draw(st.booleans()) else values
        doc[key] = draw(strategy)
    return doc


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("configs")
    (base / "task.liquid").write_text("{% log 1 %}")
    (base / "sub").mkdir()
    (base / "sub" / "t.json").write_text('{"name": "E", "script": "{% if %}"}')
    return base


def assert_config_answer(path: Path) -> None:
    try:
        daemon.load(str(path), {"TOKEN": "tok"})
    except errors.ConfigError as exc:
        assert exc.problems, "a ConfigError lists its problems"
        for problem in exc.problems:
            assert one_line(problem), problem


def test_random_configuration_files_are_ok_or_one_line_per_problem(config_dir: Path) -> None:
    path = config_dir / "c.yaml"

    @fuzz(300)
    @given(config_documents())
    def check(doc: Any) -> None:
        TRIED["config"] += 1
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        assert_config_answer(path)

    check()
    assert TRIED["config"] >= 300


YAML_TOKENS = ["database: x.db\n", "tasks:\n", "  - ", "name: T\n", "    code: ", "!!binary aGk=",
               "!!set {a}", "!!timestamp 2020-01-01", "&a [1]", "*a", "? [1]\n", ": x\n", "{",
               "}", "[", "]", "'", '"', "\t", "\x00", "#", "%YAML 1.1\n", "---\n", "webhooks: ",
               "listen: ", "timezone: ", "1e400", ".nan", "-.inf", "0x1F", "~", "<<: *a\n", "é"]


@fuzz(150)
@given(st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=4), max_size=20).map("".join))
def test_random_text_as_a_configuration_file(config_dir: Path, text: str) -> None:
    TRIED["config-text"] += 1
    path = config_dir / "t.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert_config_answer(path)


# --- Liquid sources -------------------------------------------------------------------------

LIQUID_TOKENS = [
    "{%", "%}", "{{", "}}", "{%-", "-%}", " ", "\n", "|", ":", ",", ".", "[", "]", "(", ")",
    "..", "=", "==", "!=", "<", ">", "and", "or", "contains", "if", "elsif", "else", "endif",
    "unless", "endunless", "for", "in", "endfor", "break", "continue", "case", "when", "endcase",
    "assign", "capture", "endcapture", "raw", "endraw", "comment", "endcomment", "cycle",
    "increment", "decrement", "tablerow", "endtablerow", "liquid", "echo", "action",
    "endaction", "log", "endlog", "error", "enderror", "include", "render", "limit", "offset",
    "reversed", "x", "y", "event", "event.data", "event.data.a", "options", "cache", "task",
    "forloop.index", "newline", "array", "hash", "x[0]", 'x["k"]', "x[x.size]", "nil", "true",
    "false", "empty", "blank", "0", "1", "-1", "3.5", "99999999999999999999", "(1..5)",
    "(1..100000000)", '"a"', "'b'", '"(a+)+$"', '"\\d+"', '"now"', '"%Y"', '"\\u0000"',
    "json", "parse_json", "csv", "parse_csv", "base64_decode", "gunzip", "match", "scan",
    "date", "parse_date", "e164", "split", "replace", "join", "size", "plus", "times",
    "divided_by", "modulo", "append", "slice", "sort", "sort_naturally", "uniq", "map", "where",
    "sum", "in_groups_of", "sample", "keys", "values", "except", "compact", "index_by",
    "push", "unshift", "unindent", "url_decode", "hmac_sha256", "default", "first", "last",
    "truncate", "strip_html", "escape", "silent:", "advance:", "tz:", "headers:", "{", "}",
]
FILTERS = ["json", "parse_json", "csv", "parse_csv", "base64_decode", "gunzip", "match", "scan",
           "date", "parse_date", "e164", "split", "replace", "join", "size", "plus", "times",
           "divided_by", "modulo", "append", "slice", "sort", "sort_naturally", "uniq", "map",
           "where", "sum", "in_groups_of", "sample", "keys", "values", "except", "compact",
           "index_by", "push", "unshift", "unindent", "url_decode", "hmac_sha256", "default",
           "first", "last", "truncate", "strip_html", "escape", "jsonl", "parse_jsonl",
           "base64_url_safe_decode", "md5", "upcase", "abs", "round", "at_least", "concat"]
atoms = st.sampled_from([
    "event.data", "event.data.a", "event.data[0]", "options.a", "x", "x[0]", 'x["k"]', "x.size",
    "cache", "task", "nil", "true", "false", "empty", "0", "1", "-1", "3.5", "99999999999999999999",
    "(1..5)", "(1..100000000)", '"a"', "'b c'", '"(a+)+$"', '"\\d+"', '"now"', '"%Y"', '"{}"',
    '"1 day"', '"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"', "newline", "array", "hash", "forloop"])
filtered = st.builds(
    lambda atom, chain: atom + "".join(chain), atoms,
    st.lists(st.builds(lambda f, args: f" | {f}" + (": " + ", ".join(args) if args else ""),
                       st.sampled_from(FILTERS),
                       st.lists(atoms | st.sampled_from(['silent: true', 'advance: "1 day"',
                                                         'tz: "America"', 'headers: true']),
                                max_size=2)), max_size=3))
tests_ = st.builds(lambda a, op, b: f"{a} {op} {b}", atoms,
                   st.sampled_from(["==", "!=", "<", ">", "contains", "and", "or"]), atoms)


def blocks(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    body = st.lists(inner, max_size=3).map("".join)
    return st.one_of(
        st.builds("{{% if {} %}}{}{{% else %}}{}{{% endif %}}".format, tests_, body, body),
        st.builds("{{% for x in {} limit: 3 %}}{}{{% endfor %}}".format, filtered, body),
        st.builds("{{% for x in {} %}}{}{{% endfor %}}".format, filtered, body),
        st.builds("{{% capture x %}}{}{{% endcapture %}}".format, body),
        st.builds("{{% case {} %}}{{% when 1 %}}{}{{% else %}}{}{{% endcase %}}".format,
                  filtered, body, body),
        st.builds("{{% action {}, {} %}}".format, st.sampled_from(['"echo"', '"cache"', '"http"',
                                                                   "x", "nil"]), filtered),
        st.builds("{{% action \"echo\" %}}{}{{% endaction %}}".format, body),
        st.builds("{{% log {} %}}".format, filtered),
        st.builds("{{% error {} %}}".format, filtered),
    )


nodes = st.recursive(st.one_of(
    st.builds("{{{{ {} }}}}".format, filtered),
    st.builds("{{% assign x = {} %}}".format, filtered),
    st.builds("{{% assign x[{}] = {} %}}".format, atoms, filtered),
    st.sampled_from(["{% break %}", "{% continue %}", "{% increment n %}", "{% cycle 1, 2 %}",
                     "{% raw %}{{{% endraw %}", "{% comment %}x{% endcomment %}", "text\n"]),
), blocks, max_leaves=8)
#: Well-formed templates, and the same cut, spliced and salted with random text.
liquid_sources = st.one_of(
    st.lists(nodes, max_size=5).map("".join),
    st.tuples(st.lists(nodes, min_size=1, max_size=4).map("".join), st.integers(0, 400),
              st.text(max_size=8)).map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:]),
)


@pytest.fixture(scope="module")
def renderer() -> render.Renderer:
    return render.Renderer(limits=config.Limits(loop_iterations=2_000, output_bytes=50_000,
                                                render_seconds=0.5, nesting=12))


def test_random_liquid_compiles_and_renders_or_says_why(renderer: render.Renderer) -> None:
    @fuzz(400)
    @given(liquid_sources, values)
    def check(source: str, data: Any) -> None:
        TRIED["liquid"] += 1
        variables = {"event": {"data": data, "topic": "user/a/b"}, "options": {"a": data},
                     "task": {"name": "t"}, "cache": {}, "x": data}
        try:
            template = renderer.compile(source, name="fuzz")
        except errors.ConfigError as exc:
            assert len(exc.problems) == 1 and one_line(exc.problems[0]), exc.problems
            return
        try:
            result = renderer.render(template, variables)
        except errors.RenderError as exc:
            assert one_line(exc.message), exc.message
            return
        for spec in result.actions:
            models.dumps(spec.options)  # collected objects are plain JSON data
        models.dumps(result.logs)
        models.dumps(result.errors)

    check()
    assert TRIED["liquid"] >= 400


# --- the command line, in-process -----------------------------------------------------------

cli_values = st.one_of(
    st.sampled_from(["1", "0", "-5", "99999999999999999999", "1e3", "nan", "user/a/b",
                     "mechanic/scheduler/10min", "Echo", "backup", "key", "k:1", "bad key", "{}",
                     "[", "null", '"x"', '{"a": [1, 2]}', "due", "failed", "task", "x" * 300, "",
                     "-", "--", "/dev/null", "missing.json", "cli.yaml", "cli.db", "latin1.json",
                     "\x00"]),
    st.text(max_size=12),
)
#: command -> (its first words, how many values follow them, its options)
CLI_SHAPES: dict[str, tuple[list[str], int, list[str]]] = {
    "check": ([], 0, []), "queue": ([], 0, ["--json"]), "status": ([], 0, ["--json"]),
    "send": ([], 1, ["--data", "--json"]), "trigger": ([], 1, ["--text", "--json"]),
    "runs": (["show", "retry", "cancel"], 1, ["--state", "--kind", "--task", "--limit",
                                              "--json"]),
    "cache": (["get", "set", "del"], 2, ["--ttl"]),
    "preview": ([], 1, ["--topic", "--data", "--data-file", "--json"]),
    "import": ([], 1, []), "prune": ([], 0, ["--json"]), "workers": ([], 0, ["--json"]),
    "monitor": (["tasks"], 0, ["--task", "--no-mail", "--json"]),
    "monitors": (["pause", "resume"], 1, ["--json"]),
}
FLAGS = {"--json", "--no-mail"}


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    """Mostly well-shaped command lines with odd values; some pure noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.lists(st.sampled_from(sorted(CLI_SHAPES)) | cli_values, max_size=6))
    command = draw(st.sampled_from(sorted(CLI_SHAPES)))
    words, count, options = CLI_SHAPES[command]
    argv = [command]
    if words and draw(st.integers(0, 3)) > 0:
        argv.append(draw(st.sampled_from(words)))
    least = count if draw(st.integers(0, 3)) else 0
    argv += draw(st.lists(cli_values, min_size=least, max_size=count + (least == 0)))
    for option in draw(st.lists(st.sampled_from(options), max_size=3)) if options else []:
        argv += [option] if option in FLAGS else [option, draw(cli_values)]
        if option == "--task":
            argv.append(draw(cli_values))
    return argv


CLI_CONFIG = """
email: {transport: outbox}
monitors:
  - {name: backup, period: 1h}
tasks:
  - name: Echo
    subscriptions: |
      mechanic/user/trigger
      mechanic/user/text
      user/a/b
    code: '{% action "echo", event.data %}'
"""


@pytest.fixture
def quiet_logging() -> Iterator[None]:
    """`cli.main` configures logging for a process; put the test process's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_random_command_lines_exit_0_1_or_2_with_one_line(tmp_path: Path,
                                                         quiet_logging: None) -> None:
    path = tmp_path / "cli.yaml"
    path.write_text(f"database: {tmp_path / 'cli.db'}\n" + CLI_CONFIG)
    (tmp_path / "latin1.json").write_bytes(b'"caf\xe9"')

    @fuzz(200)
    @given(argvs(), st.integers(0, 5))
    def check(argv: list[str], with_config: int) -> None:
        TRIED["cli"] += 1
        argv = [*argv, "-c", str(path)] if with_config else argv
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse: --help, --version and usage errors
                code = exc.code if isinstance(exc.code, int) else 1
        text = err.getvalue()
        assert code in (0, 1, 2), (argv, code, text)
        assert "Traceback" not in text, (argv, text)
        if code == 2:
            assert one_line(text) and text.startswith("runnerd"), (argv, text)
        elif code == 1 and text:
            lines = text.strip().splitlines()
            assert all(line.startswith("runnerd") for line in lines), (argv, text)
            assert len(lines) == 1 or all(line.startswith("runnerd: config: ") for line in lines)

    with contextlib.chdir(tmp_path):  # a relative path in argv stays in tmp_path
        check()
    assert TRIED["cli"] >= 200


# --- action options -------------------------------------------------------------------------

OPTION_KEYS = {
    "cache": ["set", "setex", "del", "incr", "incrby", "decr", "decrby", "key", "value", "ttl"],
    "echo": ["__error", "a"],
    "event": ["topic", "data", "run_at", "task_id", "task_ids", "__meta"],
    "http": ["method", "url", "headers", "body", "follow_redirects", "verify", "error_on_5xx",
             "timeout", "files", "proxy", "__perform_event"],
    "email": ["to", "subject", "body", "cc", "bcc", "reply_to", "from_display_name", "headers",
              "attachments", "template"],
}
option_values = st.one_of(
    values,
    st.sampled_from(["get", "POST", "http://127.0.0.1:1/x", "https://u:p@h/x?token=1", "ftp://x",
                     "http://", "http://[::1", "a@b.c", "A <a@b.c>", "a@b.c, <x@y>", "bob@",
                     '"q, r" <q@r.s>', "set", "k", "k:1", "bad key", "1700000000",
                     "2026-01-01T00:00:00Z", "user/a/b", "mechanic/a/b",
                     "6f1d3c52-6d0a-4f6e-9a53-2b7c5e4a9d10", "a\r\nb", "\x00", "é" * 3]),
    st.dictionaries(st.sampled_from(["Content-Type", "X-Token", "to", "a.txt", "base64",
                                     "Authorization", "bad name", "Subject", "é"]),
                    values | st.sampled_from(["application/json", "text/plain",
                                              "application/x-www-form-urlencoded", "aGk="]),
                    max_size=3),
)


def option_mappings(kind: str) -> st.SearchStrategy[Any]:
    mapping = st.dictionaries(st.sampled_from(OPTION_KEYS[kind]) | st.text(max_size=6),
                              option_values, max_size=6)
    positional = st.lists(st.sampled_from(OPTION_KEYS[kind]) | option_values, max_size=5)
    return st.one_of(mapping, positional, values)


EXECUTORS: dict[str, Any] = {
    "cache": cache_action.CacheExecutor(), "echo": echo.EchoExecutor(),
    "event": event.EventExecutor(), "email": email.EmailExecutor(config.Email(transport="outbox")),
    "http": http_action.HttpExecutor(None, config.Http()),  # type: ignore[arg-type] # no session
}


@pytest.mark.parametrize("kind", sorted(OPTION_KEYS))
def test_random_action_options_are_valid_or_a_clear_invalid_action(kind: str) -> None:
    executor = EXECUTORS[kind]
    loop = asyncio.new_event_loop()

    @fuzz(200)
    @given(option_mappings(kind))
    def check(options: Any) -> None:
        TRIED[f"options-{kind}"] += 1
        executor.redact(options)  # shown in runs, the API and error events: never fails
        try:
            executor.validate(options)
        except errors.InvalidAction as exc:
            assert one_line(exc.message) and exc.message.startswith(f"{kind}: ") or kind in (
                "echo",), exc.message
            return
        if kind in ("cache", "event", "email", "echo"):
            # perform without I/O: the outbox message is built, the Deferred is made
            try:
                loop.run_until_complete(executor.perform(options, context()))
            except errors.ActionFailed as exc:
                assert kind == "echo" or one_line(exc.message), exc.message

    try:
        check()
    finally:
        loop.close()
    assert TRIED[f"options-{kind}"] >= 200


http_options = st.fixed_dictionaries({"method": st.sampled_from(http_action.METHODS)}, optional={
    "headers": st.dictionaries(
        st.sampled_from(["Content-Type", "Authorization", "Host", "Content-Length", "Expect",
                         "Transfer-Encoding", "Connection", "Content-Encoding", "Cookie"])
        | st.text(string.ascii_letters + "-_!#", min_size=1, max_size=12),
        st.text(max_size=30) | st.integers() | st.floats() | st.sampled_from([
            "application/json", "application/x-www-form-urlencoded", "chunked", "-1", "gzip"]),
        max_size=4),
    "body": values,
    "follow_redirects": st.booleans(), "verify": st.booleans(), "error_on_5xx": st.booleans(),
    "timeout": st.floats(0.5, 5) | st.integers(1, 5) | st.none()})


def test_valid_http_options_fail_cleanly_against_a_refused_port() -> None:
    """What `validate` accepts, aiohttp must accept too: performing it (to a refused port) ends in
    ActionFailed, never another exception."""
    urls = st.sampled_from(["http://127.0.0.1:{port}/x", "http://u:p@127.0.0.1:{port}/?a=%ff",
                            "http://127.0.0.1:{port}/%zz?token=1#f", "http://127.0.0.1:{port}"])
    loop = asyncio.new_event_loop()

    async def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    client = loop.run_until_complete(session())
    executor = http_action.HttpExecutor(client, config.Http(timeout=5))

    @fuzz(150)
    @given(urls, http_options)
    def check(url: str, options: dict[str, Any]) -> None:
        options = {**options, "url": url.format(port=port)}
        try:
            executor.validate(options)
        except errors.InvalidAction:
            return
        TRIED["http-perform"] += 1
        with pytest.raises(errors.ActionFailed) as info:
            loop.run_until_complete(executor.perform(options, context()))
        assert one_line(info.value.message), info.value.message

    try:
        with refused_port() as port:
            check()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    assert TRIED["http-perform"] >= 100

