"""Hostile input at the edges, through the real daemon and the real command line.

- Header bytes that are not UTF-8, run ids past SQLite's 64-bit integers, topics with a trailing
  newline: the documented 4xx answer, never a 500 and a traceback.
- A client that hangs up in the middle of a body: one INFO line, nothing stored.
- Slow and idle clients (slow-loris): `listen.header_timeout`, `listen.body_timeout` (408) and
  `listen.keepalive_timeout` close them.
- The command line: NaN, 1e400, deep JSON, huge ids and undecodable arguments give one line and
  exit 1; `cache` counters stay within 64-bit integers; `$${` is a literal `${` in the config.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Daemon, serve, wait_until

TOKEN = "inputs-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = f"""
admin_token: {TOKEN}
monitors:
  - {{name: backup, period: 1h}}
webhooks:
  - {{name: orders, topic: user/orders/paid}}
tasks:
  - name: Counter
    subscriptions: user/count/add
    code: '{{% action "cache", "incrby", "counter", event.data %}}'
  - name: Dollar
    subscriptions: user/a/b
    code: '{{% log "$${{x}} and ${{HOME_DIR}}" %}}'
  - name: Deep
    subscriptions: user/deep/build
    code: |
      {{% assign a = array %}}
      {{% for i in (1..event.data) %}}{{% assign a = array | push: a %}}{{% endfor %}}
      {{% action "echo", a %}}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serve(Daemon(tmp_path_factory.mktemp("inputs"), CONFIG,
                            env={"HOME_DIR": "/home/x"}))


def raw(d: Daemon, data: bytes) -> bytes:
    """Send `data` (with `Connection: close`) on a new connection; the answer, to the end."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def events(d: Daemon) -> int:
    return int(d.query("SELECT COUNT(*) FROM events")[0][0])


def assert_clean_log(d: Daemon) -> None:
    log = d.logs()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


# --- the admin API ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"\xff", b"Bearer " + TOKEN.encode()
                                   + b"\xe9", "Bearer é".encode("latin-1")])
def test_a_bearer_token_that_is_not_utf8_gets_401(daemon: Daemon, value: bytes) -> None:
    for method, path in (("GET", "/api/runs"), ("POST", "/api/events")):
        answer = raw(daemon, f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
                     + b"Authorization: " + value
                     + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert status_of(answer) == 401, answer[:300]
        assert b"WWW-Authenticate: Bearer" in head
        assert json.loads(body) == {"error": "missing or wrong bearer token"}
    assert_clean_log(daemon)


HUGE_IDS = [str(2**63), str(2**64), "9" * 30, "9" * 5000, str(-(2**63) - 1)]


def test_run_ids_beyond_64_bits_are_404_on_the_api(daemon: Daemon) -> None:
    for run_id in HUGE_IDS:
        for method, path in (("GET", f"/api/runs/{run_id}"),
                             ("POST", f"/api/runs/{run_id}/retry"),
                             ("POST", f"/api/runs/{run_id}/cancel")):
            status, _, body = daemon.request(method, path, b"" if method == "POST" else None,
                                             AUTH)
            assert status == 404, (path[:60], status, body[:200])
            assert json.loads(body)["error"].startswith("no run with id ")
    status, _, body = daemon.request("GET", f"/api/runs/{2**63 - 1}", headers=AUTH)
    assert status == 404, body  # the largest id SQLite holds: a lookup, which finds nothing
    assert_clean_log(daemon)


def test_a_topic_with_a_trailing_newline_is_refused(daemon: Daemon) -> None:
    before = events(daemon)
    for topic in ("user/a/b\n", "user/a/b\n\n", "user/a\n/b"):
        status, _, body = daemon.post_json("/api/events", {"topic": topic, "data": 1}, AUTH)
        assert status == 400, body
        assert json.loads(body)["error"].startswith("bad topic ")
    assert events(daemon) == before


# --- clients that go away or dawdle -----------------------------------------------------------

def test_a_client_that_disconnects_mid_body_gets_one_info_line(daemon: Daemon) -> None:
    before = events(daemon)
    requests = [b"POST /webhooks/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
                b"POST /ping/backup HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
                b"POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n",
                b"POST /webhooks/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3e8\r\n"]
    for head in requests * 5:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            sock.sendall(head + b"0123456789")
    lines = wait_until(lambda: [line for line in daemon.log_lines()
                                if "the client disconnected" in line] if daemon.logs().count(
        "the client disconnected") >= 20 else None, message="20 disconnect lines")
    assert len(lines) == 20, lines
    assert "INFO runnerd.web.webhooks: POST /webhooks/orders: the client disconnected after 10 of " \
           "1000 body bytes; nothing stored" in lines
    assert "INFO runnerd.web.webhooks: POST /api/events: the client disconnected after 10 of 1000 " \
           "body bytes; nothing stored" in lines
    assert_clean_log(daemon)
    assert events(daemon) == before
    assert daemon.query("SELECT last_run_at FROM task_status WHERE name = 'backup'"
                        )[0][0] is None


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with short listener timeouts."""
    d = Daemon(tmp_path_factory.mktemp("timeouts"), "")
    d.config.write_text(f"""
database: {d.database}
listen: {{host: 127.0.0.1, port: {d.port}, header_timeout: 0.5s, body_timeout: 0.5s,
          keepalive_timeout: 1s}}
webhooks:
  - {{name: orders, topic: user/orders/paid}}
""")
    yield from serve(d)


def closed_by_server(sock: socket.socket, bound: float = 8.0) -> bytes:
    """Everything the server sends until it closes the connection, within `bound` seconds."""
    sock.settimeout(bound)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_headers_that_do_not_complete_are_cut_off(strict: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_server(sock) == b""
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        with pytest.raises(OSError):  # a slow-loris: a byte every 0.1 s, never a full header
            deadline = time.monotonic() + 8
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() < deadline:
                sock.sendall(b"a")
                time.sleep(0.1)
    wait_until(lambda: strict.logs().count("its request headers took over 0.5 s") >= 2)
    assert "Traceback" not in strict.logs()


def test_idle_keep_alive_connections_are_closed(strict: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_server(sock).startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        assert closed_by_server(sock) == b""  # silent since it connected


def test_a_slow_body_gets_408_and_nothing_is_stored(strict: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(b"POST /webhooks/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                     b'{"id": ')
        sock.settimeout(8)
        answer = sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(head) == 408, answer
    assert json.loads(body) == {"error": "the body did not arrive within 0.5 s"}
    assert strict.query("SELECT COUNT(*) FROM events")[0][0] == 0
    # a quick request on a fresh connection still works
    assert strict.request("POST", "/webhooks/orders", b'{"id": 1}')[0] == 204


# --- the command line -------------------------------------------------------------------------

def cli_fails(d: Daemon, *args: str | bytes) -> str:
    """Run the command line; assert exit 1 with one line on stderr, no traceback; that line."""
    proc = subprocess.run([sys.executable, "-m", "runnerd", *args, "-c", str(d.config)],
                          capture_output=True, env=d.env, timeout=30, cwd=d.tmp)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, (args[:3], proc.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert err.startswith("runnerd: "), err
    return err.strip()


def test_cli_run_ids_beyond_64_bits_are_one_line(daemon: Daemon) -> None:
    for run_id in HUGE_IDS:
        for action in ("show", "retry", "cancel"):
            line = cli_fails(daemon, "runs", action, run_id)
            assert line.startswith("runnerd: no run with id "), line


@pytest.mark.parametrize(("data", "why"), [
    ("NaN", "NaN is not JSON"), ("[Infinity]", "Infinity is not JSON"),
    ('{"a": -Infinity}', "-Infinity is not JSON"), ("1e400", "1e400 is out of range"),
    ("[" * 600 + "]" * 600, "nested more than 128 levels deep"),
    ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("{", "Expecting property name enclosed in double quotes"),
])
def test_cli_send_data_takes_only_strict_json(daemon: Daemon, data: str, why: str) -> None:
    before = events(daemon)
    line = cli_fails(daemon, "send", "user/a/b", "--data", data)
    assert line.startswith(f"runnerd: --data is not valid JSON: {why}"), line
    assert events(daemon) == before


def test_cli_odd_arguments_are_one_line(daemon: Daemon) -> None:
    assert cli_fails(daemon, "send", "user/a/b\n") == (
        "runnerd: bad topic 'user/a/b\\n': expected domain/subject/verb (lower-case letters, "
        "digits, _ - .)")
    assert cli_fails(daemon, "runs", "--task", b"\xff") == (
        "runnerd: bad task name '\\udcff': not UTF-8")
    assert cli_fails(daemon, "backup", "b" * 5000).endswith(": File name too long")
    assert cli_fails(daemon, "cache", "get", "key\n").startswith("runnerd: bad key 'key\\n'")


def test_cache_counters_stay_within_64_bits(daemon: Daemon) -> None:
    def add(n: int) -> tuple[str, str | None]:
        """Send `n` to the Counter task; the state and error of its action run (or task run)."""
        status, _, body = daemon.post_json("/api/events", {"topic": "user/count/add", "data": n},
                                           AUTH)
        assert status == 201, body
        event_id = json.loads(body)["id"]

        def done() -> tuple[str, str | None] | None:
            rows = daemon.query("SELECT kind, state, error FROM runs WHERE event_id = ? AND "
                                "kind != 'event' ORDER BY kind = 'action' DESC", (event_id,))
            if not rows or any(r["state"] not in ("succeeded", "failed") for r in rows):
                return None
            if rows[0]["kind"] == "task" and rows[0]["state"] == "succeeded":
                return None  # its action run is not there yet
            return rows[0]["state"], rows[0]["error"]

        return wait_until(done)  # type: ignore[no-any-return]

    def counter() -> int:
        return int(daemon.cli("cache", "get", "counter", check=True).stdout)

    assert add(2**63 - 1) == ("succeeded", None)
    assert add(1) == ("failed", "cache: incrby on 'counter' would overflow a 64-bit integer; "
                                "the value is unchanged")
    assert counter() == 2**63 - 1
    assert add(2**63) == ("failed", f"cache: increment must be a 64-bit integer, got {2**63}")
    assert add(-(2**63) + 1) == ("succeeded", None)
    assert counter() == 0
    daemon.cli("cache", "set", "counter", str(2**70), check=True)  # any JSON number is a value
    assert add(1) == ("failed", f"cache: incrby on 'counter', whose value {2**70} is beyond a "
                                "64-bit integer")
    assert counter() == 2**70


def test_a_double_dollar_brace_is_a_literal_in_the_config(daemon: Daemon) -> None:
    proc = daemon.cli("preview", "Dollar", "--json", check=True)
    assert json.loads(proc.stdout)["logs"] == ["${x} and /home/x"]


def test_config_names_and_topics_refuse_a_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"database: {tmp_path / 'x.db'}\nwebhooks:\n"
                    '  - {name: "orders\\n", topic: "user/orders/paid\\n"}\n')
    proc = subprocess.run([sys.executable, "-m", "runnerd", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "runnerd: config: webhooks[0].name: bad name 'orders\\n': use letters, digits, '_', '-' "
        "and '.'",
        "runnerd: config: webhooks[0].topic: bad topic 'user/orders/paid\\n': expected "
        "user/<subject>/<verb> (lower case)"]


def test_json_nested_too_deep_is_refused_at_every_door(daemon: Daemon) -> None:
    """JSON deeper than models.MAX_JSON_DEPTH (128) never gets stored as data: decoding it again
    on the worker's stack could exhaust Python's recursion limit and take the daemon down at
    every start while its run stays queued."""
    deep = "[" * 200 + "]" * 200
    status, _, body = daemon.request("POST", "/api/events",
                                     f'{{"topic": "user/a/c", "data": {deep}}}',
                                     {**AUTH, "Content-Type": "application/json"})
    assert (status, json.loads(body)["error"]) == (
        400, "the request body is not valid JSON: nested more than 128 levels deep"), body
    # A webhook keeps such a body as what it is then: text, not JSON.
    assert daemon.request("POST", "/webhooks/orders", deep,
                          {"Content-Type": "application/json"})[0] == 204
    wait_until(lambda: daemon.query(
        "SELECT data FROM events WHERE topic = 'user/orders/paid' ORDER BY created_at DESC LIMIT 1"
    )[0][0] == json.dumps(deep))
    # A task that builds such a value fails with one line; 100 levels are fine.
    for levels, state in ((100, "succeeded"), (300, "failed")):
        assert daemon.post_json("/api/events", {"topic": "user/deep/build", "data": levels},
                                AUTH)[0] == 201
        daemon.wait_runs(f"kind = 'task' AND task_name = 'Deep' AND state = '{state}'", 1)
    (error,) = daemon.query("SELECT error FROM runs WHERE task_name = 'Deep' AND state = 'failed'")
    assert "line 3: action: a value nested more than 128 levels deep" in error[0], error[0]
    assert daemon.request("GET", "/health")[0] == 200


def test_a_client_that_hangs_up_before_its_100_continue_gets_one_info_line(
        daemon: Daemon) -> None:
    """aiohttp answers `Expect: 100-continue` itself; a client already gone made that write fail
    with an ERROR and a traceback. It is one INFO line, like any client that disconnects."""
    request = (b"POST /webhooks/orders HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n")
    before = events(daemon)
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(request)  # ...and reset at once, before reading the 100 Continue
    assert daemon.request("GET", "/health")[0] == 200
    assert events(daemon) == before
    assert_clean_log(daemon)
