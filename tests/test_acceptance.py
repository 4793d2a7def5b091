"""The real daemon as a process, fed over HTTP on 127.0.0.1, stopped with SIGTERM and SIGKILL."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

from runnerd import config

from .conftest import Daemon

COUNTER = """
webhooks:
  - {name: orders, topic: user/orders/ready}
  - {name: full, topic: user/requests/full, mode: full}
  - {name: signed, topic: user/orders/signed, secret: s3cret}
tasks:
  - name: Counter
    subscriptions: |
      user/orders/ready
      user/orders/signed
    code: |
      {% action "cache", "incr", "orders" %}
      {% action "echo", data: event.data, request: event.webhook_request_id %}
"""


def test_webhook_runs_through_to_actions_and_sigterm_exits_0(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER).start()
    status, headers, body = d.post_json("/webhooks/orders", {"id": 7})
    assert status == 204 and body == b""
    request_id = headers["X-Request-Id"]
    event = d.query("SELECT * FROM events WHERE webhook_request_id = ?", (request_id,))
    assert len(event) == 1 and json.loads(event[0]["data"]) == {"id": 7}
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 2)
    states = d.query("SELECT kind, state, attempts FROM runs ORDER BY id")
    assert [tuple(r) for r in states] == [("event", "succeeded", 1), ("task", "succeeded", 1),
                                          ("action", "succeeded", 1), ("action", "succeeded", 1)]
    echo = d.query("SELECT result FROM runs WHERE action_type = 'echo'")[0]
    assert json.loads(echo["result"]) == {"data": {"id": 7}, "request": request_id}
    assert d.cli("cache", "get", "orders").stdout.strip() == "1"
    assert d.stop(signal.SIGTERM) == 0
    assert d.query("SELECT COUNT(*) FROM runs WHERE state = 'started'")[0][0] == 0


def test_webhook_errors_store_nothing(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER)
    d.config.write_text(d.config.read_text().replace(
        "listen: {host: 127.0.0.1,", "listen: {max_body_bytes: 1000, host: 127.0.0.1,"))
    d.start()
    assert d.request("POST", "/webhooks/nope", "{}")[0] == 404
    assert d.request("GET", "/webhooks/orders")[0] == 405
    assert d.request("PUT", "/webhooks/orders", "{}")[0] == 405
    assert d.request("POST", "/webhooks/orders", "x" * 2000)[0] == 413
    body = b'{"a": 1}'
    assert d.request("POST", "/webhooks/signed", body)[0] == 401
    assert d.request("POST", "/webhooks/signed", body,
                     {"X-Runnerd-Signature": "sha256=" + "0" * 64})[0] == 401
    assert d.query("SELECT COUNT(*) FROM events")[0][0] == 0
    good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert d.request("POST", "/webhooks/signed", body,
                     {"X-Runnerd-Signature": f"sha256={good}"})[0] == 204
    assert d.query("SELECT COUNT(*) FROM events")[0][0] == 1


def test_oversized_or_unreadable_bodies_are_refused_on_every_endpoint(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER + "admin_token: t0ken\nmonitors:\n"
                            "  - {name: backup, period: 1h}\n")
    d.config.write_text(d.config.read_text().replace(
        "listen: {host: 127.0.0.1,", "listen: {max_body_bytes: 1000, host: 127.0.0.1,"))
    d.start()
    big, auth = "x" * 2000, {"Authorization": "Bearer t0ken"}
    status, _, body = d.request("POST", "/api/events", big, auth)
    assert status == 413 and json.loads(body) == {"error": "body over 1000 bytes"}
    status, _, body = d.request("POST", "/ping/backup", big)
    assert status == 413 and b"body over 1000 bytes" in body
    bad_gzip = {**auth, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    status, _, body = d.request("POST", "/api/events", b"not gzip", bad_gzip)
    assert status == 400 and "not valid 'gzip'" in json.loads(body)["error"]
    assert d.query("SELECT COUNT(*) FROM events")[0][0] == 0


def test_auto_mode_data(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER).start()

    def data_of(method_path: str, body: bytes | None, ctype: str | None) -> object:
        status, headers, _ = d.request("POST", method_path, body,
                                       {"Content-Type": ctype} if ctype else {})
        assert status == 204
        row = d.query("SELECT data FROM events WHERE webhook_request_id = ?",
                      (headers["X-Request-Id"],))[0]
        return json.loads(row["data"])

    assert data_of("/webhooks/orders", b'{"a": [1, 2]}', "application/json") == {"a": [1, 2]}
    # curl -d sends form content-type even for JSON: JSON still wins
    assert data_of("/webhooks/orders", b'{"a": 1}', "application/x-www-form-urlencoded") == {"a": 1}
    assert data_of("/webhooks/orders?b=2", b"a=1", "application/x-www-form-urlencoded") == {
        "a": "1", "b": "2"}
    assert data_of("/webhooks/orders", b"hello there", "text/plain") == "hello there"
    assert data_of("/webhooks/orders?x=1", b"", None) == {"x": "1"}
    assert data_of("/webhooks/orders", b"", None) is None


def test_full_mode_data(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER).start()
    status, headers, _ = d.request("POST", "/webhooks/full?a=1&a=2&b=x", b'{"k": true}',
                                   {"Content-Type": "application/json", "X-Thing": "yes"})
    assert status == 204
    data = json.loads(d.query("SELECT data FROM events")[0]["data"])
    assert data["body"] == {"k": True}
    assert data["body_base64"] == "eyJrIjogdHJ1ZX0="
    assert data["headers"]["x-thing"] == ["yes"]
    assert data["query"] == {"a": "2", "b": "x"}
    assert data["query_string"] == "a=1&a=2&b=x"
    assert data["mime_type"] == "application/json"
    assert data["client_ip"] == "127.0.0.1"
    assert data["request_id"] == headers["X-Request-Id"]
    assert data["webhook_id"] == "full"


def test_kill_9_after_204_loses_nothing(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER).start()
    accepted = []
    for i in range(50):
        status, headers, _ = d.post_json("/webhooks/orders", {"i": i})
        assert status == 204
        accepted.append(headers["X-Request-Id"])
    d.kill()  # SIGKILL right after the last 204
    stored = {r[0] for r in d.query("SELECT webhook_request_id FROM events "
                                    "WHERE webhook_request_id IS NOT NULL")}
    assert stored == set(accepted)
    d.start()
    d.wait_runs("kind = 'event' AND state = 'succeeded'", 50)
    d.wait_runs("kind = 'action' AND action_type = 'cache' AND state = 'succeeded'", 50)
    assert d.query("SELECT COUNT(*) FROM runs WHERE kind = 'event'")[0][0] == 50
    assert int(d.cli("cache", "get", "orders").stdout) >= 50  # at-least-once actions
    assert d.stop() == 0


def test_second_daemon_on_the_same_database_is_refused(make_daemon, tmp_path: Path) -> None:
    d: Daemon = make_daemon(COUNTER).start()
    second = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(d.config)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert "already running" in second.stderr and second.stderr.count("\n") == 1
    assert d.stop() == 0


def test_bad_config_exits_with_one_line_per_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"""database: {tmp_path / 'x.db'}
concurrency: lots
tasks:
  - name: Broken
    subscriptions: user/a/b
    code: "{{% if %}}"
  - name: Bad topic
    subscriptions: shopify/orders/create
    code: ""
""")
    out = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert any("concurrency: expected an integer" in line for line in lines)
    assert any("'Broken'" in line and "line 1" in line for line in lines)
    assert any("not supported: 'shopify/orders/create'" in line for line in lines)
    assert not (tmp_path / "x.db").exists()


def test_check_command(example_config: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "runnerd", "check", "-c", str(example_config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    tasks = config.load(example_config, {}).tasks
    assert f"OK: {len(tasks)} task(s)" in out.stdout
    assert not list(example_config.parent.glob("*.db"))  # check creates no database


def test_output_to_a_closed_pipe_is_no_traceback(example_config: Path) -> None:
    """`runnerd … | head`: the reader may go away before the command prints; exit quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "runnerd", "check", "-c", str(example_config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the command has started and printed
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 1
    assert err == "", err


def test_dead_mans_switch_on_trigger_and_scheduler(make_daemon) -> None:
    d: Daemon = make_daemon("""
tasks:
  - name: Dead man's switch
    subscriptions: |
      mechanic/user/trigger
      mechanic/scheduler/10min
    code: |
      {% if event.topic == "mechanic/user/trigger" %}
        {% action "cache", "setex", "dead-mans-switch", 3600, true %}
      {% elsif event.topic == "mechanic/scheduler/10min" %}
        {% unless cache["dead-mans-switch"] %}
          {% action "echo", alert: "no trigger in the last hour" %}
        {% endunless %}
      {% endif %}
""").start()
    assert d.cli("send", "mechanic/scheduler/10min").returncode == 0
    d.wait_runs("action_type = 'echo' AND state = 'succeeded'", 1)
    trig = d.cli("trigger", "Dead man's switch")
    assert trig.returncode == 0, trig.stderr
    d.wait_runs("action_type = 'cache' AND state = 'succeeded'", 1)
    assert d.cli("cache", "get", "dead-mans-switch").stdout.strip() == "true"
    d.cli("send", "mechanic/scheduler/10min", check=True)
    d.wait_runs("kind = 'task' AND state = 'succeeded'", 3)
    assert d.query("SELECT COUNT(*) FROM runs WHERE action_type = 'echo'")[0][0] == 1
    assert d.stop() == 0


def test_admin_api(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER + "admin_token: t0ken\n").start()
    auth = {"Authorization": "Bearer t0ken"}
    assert d.request("GET", "/api/queue")[0] == 401
    assert d.request("GET", "/api/queue", headers={"Authorization": "Bearer nope"})[0] == 401
    status, _, body = d.post_json("/api/events", {"topic": "user/orders/ready", "data": 1}, auth)
    assert status == 201
    event_id = json.loads(body)["id"]
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 2)
    status, _, body = d.request("GET", "/api/runs?kind=event", headers=auth)
    runs_ = json.loads(body)
    assert status == 200 and runs_[0]["event_id"] == event_id
    status, _, body = d.request("GET", f"/api/runs/{runs_[0]['id']}", headers=auth)
    assert status == 200 and json.loads(body)["event"]["topic"] == "user/orders/ready"
    assert d.request("GET", "/api/runs/999999", headers=auth)[0] == 404
    assert d.request("GET", "/api/runs/abc", headers=auth)[0] == 404
    assert d.request("POST", "/api/tasks/Nope/trigger", headers=auth)[0] == 404
    assert d.request("POST", "/api/runs/1/retry", headers=auth)[0] == 400  # succeeded
    assert d.post_json("/api/events", {"topic": "bad"}, auth)[0] == 400
    # Not JSON, as for webhooks: nothing stored (NaN used to be stored as null).
    events_before = d.query("SELECT COUNT(*) FROM events")[0][0]
    for text, why in (('{"topic": "user/orders/ready", "data": NaN}', "NaN is not JSON"),
                      ('{"topic": "user/orders/ready", "data": 1e400}', "1e400 is out of range")):
        status, _, body = d.request("POST", "/api/events", text, auth)
        assert (status, json.loads(body)) == (
            400, {"error": f"the request body is not valid JSON: {why}"})
    assert d.query("SELECT COUNT(*) FROM events")[0][0] == events_before
    status, _, body = d.request("GET", "/api/queue", headers=auth)
    assert status == 200 and "queue" in json.loads(body)
    assert d.stop() == 0


def test_api_disabled_without_token(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER).start()
    assert d.request("GET", "/api/queue", headers={"Authorization": "Bearer x"})[0] == 404
    assert d.stop() == 0


def test_cli_runs_and_cache(make_daemon) -> None:
    d: Daemon = make_daemon("""
tasks:
  - name: Fails
    subscriptions: user/a/b
    code: '{% error "nope" %}'
""")
    d.start()
    d.cli("send", "user/a/b", "--data", '{"x": 1}', check=True)
    d.wait_runs("kind = 'task' AND state = 'failed'", 1)
    assert d.stop() == 0
    listing = json.loads(d.cli("runs", "--json", "--state", "failed").stdout)
    assert [r["task_name"] for r in listing] == ["Fails"] and listing[0]["error"] == "nope"
    run_id = str(listing[0]["id"])
    shown = json.loads(d.cli("runs", "show", run_id).stdout)
    assert shown["event"]["data"] == {"x": 1}
    assert "queued" not in d.cli("runs", "retry", run_id).stderr
    assert d.query("SELECT state FROM runs WHERE id = ?", (int(run_id),))[0][0] == "due"
    assert d.cli("runs", "show", "424242").returncode == 1
    bad = d.cli("send", "user/a/b", "--data", "{nope")
    assert bad.returncode == 1 and "--data is not valid JSON" in bad.stderr
    assert d.cli("cache", "set", "greeting", "hello").returncode == 0
    assert d.cli("cache", "get", "greeting").stdout.strip() == '"hello"'
    assert d.cli("cache", "set", "n", "41", "--ttl", "60").returncode == 0
    assert d.cli("cache", "get", "n").stdout.strip() == "41"
    assert d.cli("cache", "del", "n").returncode == 0
    absent = d.cli("cache", "get", "n")
    assert absent.returncode == 1 and absent.stdout == ""
    assert "bad key" in d.cli("cache", "get", "no spaces!").stderr
    queue = json.loads(d.cli("queue", "--json").stdout)
    assert queue["queue"]["task"]["due"] == 1
    assert "queue lag" in d.cli("status").stdout


def test_config_flag_before_or_after_command(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER).create_database()
    before = subprocess.run([sys.executable, "-m", "runnerd", "-c", str(d.config), "runs"],
                            capture_output=True, text=True, timeout=30)
    after = subprocess.run([sys.executable, "-m", "runnerd", "runs", "-c", str(d.config)],
                           capture_output=True, text=True, timeout=30)
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout == "no runs\n"


def test_urlencoded_webhook_name_is_404_not_crash(make_daemon) -> None:
    d: Daemon = make_daemon(COUNTER).start()
    assert d.request("POST", "/webhooks/" + urllib.parse.quote("ünïcode"), "{}")[0] == 404
    assert d.stop() == 0


def test_webhook_json_is_stored_as_received_and_overflow_is_text(make_daemon) -> None:
    d = make_daemon("""
        webhooks:
          - {name: orders, topic: user/orders/ready}
        tasks: []
    """).start()
    body = ('{"id": 1, "note": "caf\\u00e9 \\ud83d\\ude00", "big": 12345678901234567890,'
            ' "x": 1.5e3}')
    assert d.request("POST", "/webhooks/orders", body)[0] == 204
    text = {"Content-Type": "text/plain"}
    assert d.request("POST", "/webhooks/orders", '{"n": 1e400}', text)[0] == 204
    assert d.request("POST", "/webhooks/orders", b'\xef\xbb\xbf{"bom": true}')[0] == 204
    assert d.request("POST", "/webhooks/orders", '{"note": "\\ud800"}', text)[0] == 204
    rows = [r[0] for r in d.query("SELECT data FROM events ORDER BY created_at")]
    assert rows[0] == body  # byte for byte, whitespace included
    assert json.loads(rows[0])["big"] == 12345678901234567890
    assert json.loads(rows[1]) == '{"n": 1e400}'  # not a finite number: the body as text
    assert json.loads(rows[2]) == {"bom": True} and not rows[2].startswith("\ufeff")
    assert json.loads(rows[3]) == '{"note": "\\ud800"}'  # a lone surrogate: text too
    valid = ("json_valid(data)" if d.pg_url is None
             else "CAST(CAST(data AS json) IS NOT NULL AS int)")
    assert all(r[0] == 1 for r in d.query(f"SELECT {valid} FROM events"))
    assert d.stop() == 0
