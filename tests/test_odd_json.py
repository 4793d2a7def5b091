"""JSON that Python's json module takes but PostgreSQL's text or jsonb cannot hold, on both
engines: a `\\u0000` escape is accepted and stored faithfully everywhere, a lone surrogate
(`"\\ud800"`, no Unicode character) is refused up front by the API and `runnerd send`, and makes a
webhook's body text (as NaN does). Never a 500, a crashed worker or a run failing later."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Daemon, wait_until
from .test_postgres import PgDaemon

AUTH = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}

CONFIG = """
admin_token: t0ken
email: {transport: outbox, from: runnerd@example.test}
monitors:
  - {name: backup, period: 1h, grace: 10m}
webhooks:
  - {name: auto, topic: user/odd/in}
  - {name: full, topic: user/odd/full, mode: full}
tasks:
  - name: Keep
    subscriptions: [user/odd/in, user/odd/full]
    code: |
      {% assign d = event.data %}
      {% if event.topic == "user/odd/full" %}{% assign d = event.data.body %}{% endif %}
      {% log d %}
      {% action "echo", d %}
      {% action "cache", "set", event.topic, d %}
      {% action "email", to: "ops@example.test", subject: "odd", body: d.k | default: "none" %}
      {% action "event", topic: "user/odd/again", data: d %}
  - name: Fail
    subscriptions: [user/odd/again]
    code: |
      {% error event.data.k %}
"""

NUL_BODY = '{"k": "a\\u0000b"}'  # the JSON text: an escape, six ASCII characters


@pytest.fixture(params=["sqlite", "postgres"])
def odd(request: pytest.FixtureRequest, make_daemon: Any) -> Daemon:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        return make_daemon(CONFIG, PgDaemon, url=url).start()  # type: ignore[no-any-return]
    return make_daemon(CONFIG).start()  # type: ignore[no-any-return]


def test_a_nul_escape_is_stored_and_used_like_any_text(odd: Daemon) -> None:
    d = odd
    assert d.request("POST", "/webhooks/auto", NUL_BODY,
                     {"Content-Type": "application/json"})[0] == 204
    assert d.request("POST", "/webhooks/full", NUL_BODY,
                     {"Content-Type": "application/json"})[0] == 204
    assert d.request("POST", "/api/events", json.dumps(
        {"topic": "user/odd/in", "data": {"k": "a\0b"}}), AUTH)[0] == 201
    assert d.cli("send", "user/odd/in", "--data", NUL_BODY).returncode == 0
    assert d.request("POST", "/ping/backup", "x\0y", {"Content-Type": "text/plain"})[0] == 200
    d.wait_runs("kind = 'task' AND task_name = 'Fail' AND state = 'failed'", 4, timeout=30)
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 16, timeout=30)
    assert d.query("SELECT COUNT(*) AS n FROM runs WHERE state NOT IN ('succeeded', 'failed')"
                   " OR (state = 'failed' AND task_name <> 'Fail')")[0]["n"] == 0
    for row in d.query("SELECT data FROM events WHERE topic = 'user/odd/in'"):
        assert json.loads(row["data"]) == {"k": "a\0b"}  # stored faithfully
    [full] = d.query("SELECT data FROM events WHERE topic = 'user/odd/full'")
    assert json.loads(full["data"])["body"] == {"k": "a\0b"}
    echoed = [json.loads(r["options"]) for r in d.query(
        "SELECT options FROM runs WHERE action_type = 'echo'")]
    assert echoed == [{"k": "a\0b"}] * 4
    assert json.loads(d.cli("cache", "get", "user/odd/in").stdout) == {"k": "a\0b"}
    # Plain text: PostgreSQL's cannot hold a NUL, so it has U+FFFD there; SQLite's keeps it.
    nul = "\0" if d.pg_url is None else "\ufffd"
    errors = {r["error"] for r in d.query("SELECT error FROM runs WHERE task_name = 'Fail'")}
    assert errors == {f"a{nul}b"}
    assert {f"a{nul}b" in r["message"] for r in d.query("SELECT message FROM outbox")} == {True}
    assert d.request("GET", "/api/runs?limit=100", headers=AUTH)[0] == 200
    assert d.request("GET", "/health")[0] == 200
    assert d.stop() == 0, d.logs()


def test_a_lone_surrogate_is_refused_up_front_or_a_webhook_body_is_text(odd: Daemon) -> None:
    d = odd
    body = '{"k": "x\\ud800y"}'
    status, _, text = d.request("POST", "/api/events",
                                json.dumps({"topic": "user/odd/in", "data": {"k": "\ud800"}},
                                           ensure_ascii=True), AUTH)
    assert status == 400, text
    assert json.loads(text)["error"] == ("the request body is not valid JSON: \\ud800 is a lone "
                                         "surrogate, not a Unicode character")
    sent = d.cli("send", "user/odd/in", "--data", body)
    assert sent.returncode != 0 and sent.stderr.count("\n") == 1, sent.stderr
    assert "--data is not valid JSON: \\ud800 is a lone surrogate" in sent.stderr
    assert d.request("POST", "/webhooks/auto", body, {"Content-Type": "application/json"}
                     )[0] == 204
    assert d.request("POST", "/webhooks/auto", '{"ok": "\\ud83d\\ude00"}',  # a pair: one emoji
                     {"Content-Type": "application/json"})[0] == 204
    d.wait_runs("kind = 'task' AND task_name = 'Keep' AND state <> 'due'", 2, timeout=30)
    wait_until(lambda: d.query("SELECT COUNT(*) AS n FROM runs WHERE state IN"
                               " ('due', 'started')")[0]["n"] == 0, timeout=30)
    data = [json.loads(r["data"]) for r in d.query("SELECT data FROM events WHERE source ="
                                                   " 'webhook' ORDER BY created_at")]
    assert data == [body, {"ok": "\U0001f600"}]  # the first as the text it came in
    keep = d.query("SELECT state, error FROM runs WHERE task_name = 'Keep' AND kind = 'task'")
    assert [tuple(r) for r in keep] == [("succeeded", None)] * 2
    assert d.query("SELECT COUNT(*) AS n FROM events WHERE source IN ('api', 'cli')"
                   )[0]["n"] == 0
    assert d.stop() == 0, d.logs()

