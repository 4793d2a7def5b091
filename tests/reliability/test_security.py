"""Who gets in, and what never comes out.

- `/api/*` answers only the admin token (401 otherwise, and nothing changes); without an
  `admin_token` the API is disabled (404).
- A webhook with a `secret` takes only a valid `X-Runnerd-Signature`; with `X-Runnerd-Timestamp`
  the signature covers `<timestamp>.<body>` and an old (replayed) timestamp is refused.
- The listener binds 127.0.0.1 unless told otherwise; webhooks and the event action cannot create
  `mechanic/*` or `runnerd/*` events (the operator's `runnerd send` may); an empty webhook secret
  is a configuration error, not an unsigned webhook.
- Secrets (admin token, webhook secret, ping key, SMTP password, Authorization and API-key headers,
  URL credentials) never appear in the log, the database, the HTTP answers or the command line's
  output, even when the actions that carry them fail.
- The database files (the file, its -wal and -shm, the lock file) are created 0600, whatever the
  umask; a file that exists keeps its mode.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runnerd import config, errors
from runnerd.actions import event as event_action

from ..conftest import Daemon, create_database, free_port, serve, wait_until
from ..helpers_servers import authenticator, refused_port, smtp_server
from .helpers import Target

SECRETS = {
    "ADMIN": "ADMIN-TOKEN-7f3a9c1e",
    "HOOK": "HOOK-SECRET-2b8e1d44",
    "SMTP_PASSWORD": "SMTP-PASSWORD-9c4f6a21",
    "HTTP_AUTH": "HTTP-AUTH-5d7e0b33",
    "API_KEY": "APIKEY-61c2d9aa",
    "URL_PASS": "URLPASS-8e1f2277",
    "URL_TOKEN": "QUERYTOKEN-77aa0c",
    "PING_KEY": "PINGKEY-4b6e1f90",
}
WRONG_TOKEN = "WRONG-TOKEN-0d9e8f7a"  # what a client tried: never echoed either
AUTH = {"Authorization": f"Bearer {SECRETS['ADMIN']}"}

CONFIG = """
admin_token: ${ADMIN}
email:
  transport: smtp
  from: runnerd@example.com
  smtp: {host: 127.0.0.1, port: SMTP_PORT, username: mailer, password: "${SMTP_PASSWORD}",
         starttls: never, timeout: 5}
webhooks:
  - {name: signed, topic: user/orders/signed, secret: "${HOOK}", tolerance: 60}
  - {name: full, topic: user/orders/full, mode: full, secret: "${HOOK}"}
monitors:
  - {name: guarded, period: 1h, grace: 1h, ping_key: "${PING_KEY}"}
tasks:
  - name: Caller
    subscriptions: |
      user/secret/go
      mechanic/actions/perform
    options:
      refused: http://127.0.0.1:REFUSED/x
      with_credentials: http://user:${URL_PASS}@127.0.0.1:REFUSED/y?token=${URL_TOKEN}
      target: TARGET/ok?api_key=${URL_TOKEN}
      not_http: http://127.0.0.1:SMTP_PORT/
      auth: Bearer ${HTTP_AUTH}
      key: ${API_KEY}
    code: |
      {% if event.topic == "user/secret/go" %}
        {% assign headers = hash %}
        {% assign headers["Authorization"] = options.auth %}
        {% assign headers["X-Api-Key"] = options.key %}
        {% assign keyed = hash %}
        {% assign keyed["X-Api-Key"] = options.key %}
        {% action "http", method: "post", url: options.refused, headers: headers, body: "a" %}
        {% action "http", method: "get", url: options.with_credentials, headers: keyed %}
        {% action "http", method: "get", url: options.target, headers: headers %}
        {% action "http", method: "get", url: options.not_http, headers: headers %}
        {% action "email", to: "ops@example.com", subject: "hello", body: "<p>hi</p>" %}
      {% endif %}
"""


class VerboseDaemon(Daemon):
    """The conftest daemon with debug logging (`runnerd -v run`): more output to search."""

    def start(self, *, wait: bool = True) -> Daemon:
        out = open(self.log, "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runnerd", "-v", "run", "-c", str(self.config)],
            stdout=out, stderr=out, env=self.env, cwd=self.tmp)
        out.close()
        if wait:
            wait_until(self._listening, timeout=20)
        return self


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    """A refused port, an HTTP target, and an SMTP server that refuses runnerd's password."""
    with refused_port() as refused, Target() as target, smtp_server(
            auth_require_tls=False,
            authenticator=authenticator("mailer", "the-real-password")) as (smtp, recorder):
        yield {"refused": refused, "target": target, "smtp": smtp, "recorder": recorder}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, Any]
           ) -> Iterator[Daemon]:
    body = (CONFIG.replace("SMTP_PORT", str(servers["smtp"].port))
            .replace("REFUSED", str(servers["refused"])).replace("TARGET", servers["target"].url))
    yield from serve(VerboseDaemon(tmp_path_factory.mktemp("security"), body, env=SECRETS))


def sign(body: bytes, secret: str = SECRETS["HOOK"], timestamp: str | None = None) -> str:
    signed = body if timestamp is None else timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def snapshot(d: Daemon) -> list[tuple[Any, ...]]:
    return ([tuple(r) for r in d.query("SELECT id, state, attempts, error FROM runs")]
            + [tuple(r) for r in d.query("SELECT id FROM events")])


# --- the admin API --------------------------------------------------------------------------

def test_api_answers_only_the_admin_token_and_refusals_change_nothing(daemon: Daemon) -> None:
    status, _, body = daemon.post_json("/api/events", {"topic": "user/api/seed", "data": 1}, AUTH)
    assert status == 201, body
    daemon.wait_runs("kind = 'event' AND state = 'succeeded'", 1)
    run_id = daemon.query("SELECT id FROM runs ORDER BY id LIMIT 1")[0][0]
    before = snapshot(daemon)
    token = SECRETS["ADMIN"]
    wrong = [{}, {"Authorization": f"Bearer {WRONG_TOKEN}"}, {"Authorization": token},
             {"Authorization": f"bearer {token}"}, {"Authorization": f"Bearer {token[:-1]}"},
             {"Authorization": f"Bearer {token}x"}, {"Authorization": f"Bearer  {token}"},
             {"Authorization": f"Basic {token}"}, {"X-Admin-Token": token}]
    requests = [("GET", "/api/runs", None), ("GET", f"/api/runs/{run_id}", None),
                ("POST", f"/api/runs/{run_id}/retry", b""),
                ("POST", f"/api/runs/{run_id}/cancel", b""),
                ("POST", "/api/events", json.dumps({"topic": "user/api/x", "data": 1}).encode()),
                ("POST", "/api/tasks/Caller/trigger", b"{}"), ("GET", "/api/queue", None)]
    for headers in wrong:
        for method, path, data in requests:
            status, answer, body = daemon.request(method, path, data, headers)
            assert status == 401, (method, path, headers, status, body)
            assert answer.get("WWW-Authenticate") == "Bearer"
            assert json.loads(body) == {"error": "missing or wrong bearer token"}
    assert snapshot(daemon) == before, "a refused request changed the database"
    assert daemon.request("GET", "/api/queue", headers=AUTH)[0] == 200


def test_without_an_admin_token_the_api_is_disabled(make_daemon: Any) -> None:
    d: Daemon = make_daemon("tasks: []\n").start()
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
        status, _, body = d.post_json("/api/events", {"topic": "user/a/b", "data": 1}, headers)
        assert (status, json.loads(body)) == (
            404, {"error": "the admin API is disabled (no admin_token)"})
        assert d.request("GET", "/api/runs", headers=headers)[0] == 404
    assert d.query("SELECT COUNT(*) FROM events")[0][0] == 0


# --- the database files ---------------------------------------------------------------------

@pytest.mark.sqlite_only("the database file's mode")
def test_database_files_are_created_private_whatever_the_umask(make_daemon: Any) -> None:
    d: Daemon = make_daemon("webhooks:\n  - {name: orders, topic: user/orders/ready}\n")
    old = os.umask(0o022)  # a shell's usual umask (systemd's unit sets 0027): files 0644
    try:
        d.start()
    finally:
        os.umask(old)
    assert d.post_json("/webhooks/orders", {"n": 1})[0] == 204
    names = ["runnerd.db", "runnerd.db-wal", "runnerd.db-shm", "runnerd.db.lock"]
    modes = {name: oct(stat.S_IMODE((d.tmp / name).stat().st_mode)) for name in names}
    assert modes == dict.fromkeys(names, "0o600")
    assert d.stop() == 0
    # a file the operator made readable keeps its mode (runnerd never chmods it)
    d.db_path.chmod(0o640)
    d.start()
    assert d.post_json("/webhooks/orders", {"n": 2})[0] == 204
    assert stat.S_IMODE(d.db_path.stat().st_mode) == 0o640
    assert d.stop() == 0


# --- signed webhooks ------------------------------------------------------------------------

def test_signed_webhooks_refuse_missing_wrong_and_replayed_signatures(daemon: Daemon) -> None:
    def events() -> int:
        return int(daemon.query("SELECT COUNT(*) FROM events WHERE topic = "
                                "'user/orders/signed'")[0][0])

    body = b'{"id": 1}'
    now = int(time.time())
    fresh, old, ahead = str(now), str(now - 3600), str(now + 3600)
    cases = [
        ({}, 401),
        ({"X-Runnerd-Signature": sign(body, "not-the-secret")}, 401),
        ({"X-Runnerd-Signature": sign(body).replace("sha256=", "sha1=")}, 401),
        ({"X-Runnerd-Signature": sign(body)[:-2]}, 401),
        ({"X-Runnerd-Signature": sign(b'{"id": 2}')}, 401),  # another body's signature
        ({"X-Runnerd-Signature": sign(body, timestamp=old), "X-Runnerd-Timestamp": old}, 401),
        ({"X-Runnerd-Signature": sign(body, timestamp=ahead), "X-Runnerd-Timestamp": ahead}, 401),
        ({"X-Runnerd-Signature": sign(body, timestamp=old), "X-Runnerd-Timestamp": fresh}, 401),
        ({"X-Runnerd-Signature": sign(body), "X-Runnerd-Timestamp": fresh}, 401),  # unsigned ts
        ({"X-Runnerd-Signature": sign(body, timestamp="soon"), "X-Runnerd-Timestamp": "soon"},
         401),
        ({"X-Runnerd-Signature": sign(body, timestamp="nan"), "X-Runnerd-Timestamp": "nan"}, 401),
        ({"X-Runnerd-Signature": sign(body)}, 204),
        ({"X-Runnerd-Signature": sign(body).upper().replace("SHA256=", "sha256=")}, 204),
        ({"X-Runnerd-Signature": sign(body, timestamp=fresh), "X-Runnerd-Timestamp": fresh}, 204),
    ]
    for headers, expected in cases:
        before = events()
        status, _, answer = daemon.request("POST", "/webhooks/signed", body, headers)
        assert status == expected, (headers, status, answer)
        assert events() == before + (status == 204), headers
        if status == 401:
            assert "error" in json.loads(answer)
    assert SECRETS["HOOK"] not in daemon.logs()


# --- where the listener binds, and who may create which topics -------------------------------

def test_the_listener_binds_loopback_by_default(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "c.yaml").write_text(f"database: {tmp_path / 'x.db'}\nlisten: {{port: {port}}}\n")
    settings = config.load(tmp_path / "c.yaml", {})
    assert settings.listen.host == "127.0.0.1"
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "runnerd", "run", "-c",
                                 str(tmp_path / "c.yaml")], stderr=out)
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(up, timeout=20)
        # 127.0.0.2 is this machine too, but not the address the listener is bound to
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_an_empty_webhook_secret_is_refused_not_unsigned(tmp_path: Path) -> None:
    """`secret: ${VAR}` with VAR set but empty would quietly accept unsigned requests."""
    path = tmp_path / "c.yaml"
    path.write_text(f"database: {tmp_path / 'x.db'}\n"
                    "webhooks:\n  - {name: w, topic: user/a/b, secret: \"${HOOK}\"}\n")
    with pytest.raises(errors.ConfigError) as info:
        config.load(path, {"HOOK": ""})
    assert info.value.problems == [
        "webhooks[0].secret: empty: remove the key for a webhook without a signature"]
    assert config.load(path, {"HOOK": "s"}).webhooks[0].secret == "s"


@pytest.mark.parametrize("topic", ["mechanic/user/trigger", "mechanic/scheduler/10min",
                                   "runnerd/monitors/down", "shopify/orders/create"])
def test_only_the_operator_creates_system_topics(tmp_path: Path, topic: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"database: {tmp_path / 'x.db'}\nwebhooks:\n  - {{name: w, topic: {topic}}}\n")
    with pytest.raises(errors.ConfigError) as info:
        config.load(path, {})
    assert info.value.problems == [
        f"webhooks[0].topic: bad topic {topic!r}: expected user/<subject>/<verb> (lower case)"]
    with pytest.raises(errors.InvalidAction, match="event: topic must be user/<subject>/<verb>"):
        event_action.EventExecutor().validate({"topic": topic, "data": None})
    path.write_text(f"database: {tmp_path / 'x.db'}\n")
    create_database(tmp_path / "x.db")
    out = subprocess.run([sys.executable, "-m", "runnerd", "send", topic, "-c", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr  # `runnerd send` is the operator's tool


# --- secrets stay secret --------------------------------------------------------------------

def database_text(d: Daemon) -> str:
    """Every text value of every table, but the stored options of http action runs (kept
    whole on purpose, so that a retry sends the same request: shown redacted everywhere)."""
    out = []
    tables = [r[0] for r in d.query(
        "SELECT name FROM sqlite_master WHERE type = 'table'" if d.pg_url is None else
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE'")]
    for table in tables:
        for row in d.query(f"SELECT * FROM {table}"):  # noqa: S608 - names from sqlite_master
            values = dict(row)
            if table == "runs" and values.get("action_type") == "http":
                values.pop("options")
            out.append(f"{table}: {values}")
    return "\n".join(out)


def test_secrets_never_appear_in_logs_database_answers_or_output(
        daemon: Daemon, servers: dict[str, Any]) -> None:
    # Traffic that uses every secret: signed webhooks (one in full mode), API calls with the
    # right and a wrong token, and a task whose http and email actions carry credentials.
    body = b'{"order": 7}'
    assert daemon.request("POST", "/webhooks/full", body,
                          {"X-Runnerd-Signature": sign(body)})[0] == 204
    assert daemon.request("POST", "/webhooks/full", body,
                          {"X-Runnerd-Signature": sign(body, WRONG_TOKEN)})[0] == 401
    assert daemon.request("GET", "/api/runs", headers={
        "Authorization": f"Bearer {WRONG_TOKEN}"})[0] == 401
    assert daemon.request("GET", f"/ping/guarded?key={SECRETS['PING_KEY']}")[0] == 200
    assert daemon.request("POST", "/ping/guarded/fail", "x", {
        "X-Runnerd-Ping-Key": SECRETS["PING_KEY"]})[0] == 200
    assert daemon.request("GET", f"/ping/guarded?key={WRONG_TOKEN}")[0] == 401
    status, _, answer = daemon.post_json("/api/events", {"topic": "user/secret/go", "data": 1},
                                         AUTH)
    assert status == 201, answer
    event_id = json.loads(answer)["id"]

    def settled() -> bool:
        rows = daemon.query("SELECT state FROM runs WHERE kind = 'action' AND event_id = ?",
                            (event_id,))
        errors_ = daemon.query("SELECT COUNT(*) FROM events WHERE topic = "
                               "'mechanic/errors/action'")[0][0]
        return (len(rows) == 5 and errors_ >= 2
                and all(r["state"] in ("scheduled", "succeeded", "failed") for r in rows))

    wait_until(settled, timeout=30)
    actions = {(r["action_type"], r["state"]) for r in daemon.query(
        "SELECT action_type, state FROM runs WHERE kind = 'action' AND event_id = ?",
        (event_id,))}
    assert actions == {("http", "scheduled"), ("http", "succeeded"), ("http", "failed"),
                       ("email", "failed")}, actions
    assert servers["target"].hits.get("ok") == 1 and servers["recorder"].messages == []
    daemon.wait_runs("kind = 'event' AND state = 'succeeded'", int(daemon.query(
        "SELECT COUNT(*) FROM events")[0][0]))  # the perform and error events were handled
    errors_text = " ".join(r[0] for r in daemon.query(
        "SELECT error FROM runs WHERE error IS NOT NULL"))
    for expected in ("Connection refused", "invalid response", "SMTP authentication failed"):
        assert expected in errors_text, errors_text  # the failures did happen, and say why

    # Every channel a person or a script reads.
    channels = {"log": daemon.logs(), "database": database_text(daemon)}
    run_ids = [r[0] for r in daemon.query("SELECT id FROM runs WHERE kind != 'event'")]
    for path in ["/status", "/metrics", "/health", "/api/queue", "/api/runs?limit=1000",
                 *(f"/api/runs/{i}" for i in run_ids)]:
        status, _, answer = daemon.request("GET", path, headers=AUTH)
        assert status == 200, (path, status)
        channels[path] = answer.decode()
    for args in [("runs", "--json", "--limit", "1000"), ("runs",), ("queue", "--json"),
                 ("workers", "--json"), ("monitors", "--json"), ("check",),
                 *(("runs", "show", str(i)) for i in run_ids)]:
        out = daemon.cli(*args)
        assert out.returncode == 0, (args, out.stderr)
        channels[" ".join(args)] = out.stdout + out.stderr
    channels["log"] = daemon.logs()
    assert "[redacted]" in channels["/api/runs?limit=1000"]
    for name, text in channels.items():
        for secret in [*SECRETS.values(), WRONG_TOKEN]:
            assert secret not in text, f"{secret} appears in {name}"


# --- where the http action may connect (the URL comes from webhook data) -----------------------

CALLER = """
admin_token: ${ADMIN}
webhooks:
  - {name: call, topic: user/call/go}
tasks:
  - name: Caller
    subscriptions: user/call/go
    options: {auth: "Bearer ${ADMIN}", key: "${API_KEY}", xauth: "${HTTP_AUTH}",
              xpass: "${URL_PASS}"}
    code: |
      {% assign headers = hash %}
      {% if event.data.secrets %}
        {% assign headers["Authorization"] = options.auth %}
        {% assign headers["X-Api-Key"] = options.key %}
        {% assign headers["X-Auth"] = options.xauth %}
        {% assign headers["X-Password"] = options.xpass %}
        {% assign headers["Accept"] = "application/json" %}
        {% assign headers["X-Custom"] = "kept" %}
      {% endif %}
      {% action "http", method: event.data.method, url: event.data.url, headers: headers,
         body: event.data.body %}
"""
#: The headers the Caller task sends with `secrets` (from its options, never the event).
SECRET_HEADERS = {"Authorization": f"Bearer {SECRETS['ADMIN']}", "X-Api-Key": SECRETS["API_KEY"],
                  "X-Auth": SECRETS["HTTP_AUTH"], "X-Password": SECRETS["URL_PASS"]}


def call(d: Daemon, target: str, method: str = "get", *, secrets: bool = False,
         body: Any = None) -> dict[str, Any]:
    """POST the webhook that makes the Caller task request `target`; its action run, settled."""
    data = {"url": target, "method": method, "secrets": secrets, "body": body}
    done = "kind = 'action' AND state IN ('succeeded', 'failed')"
    count = d.query(f"SELECT COUNT(*) FROM runs WHERE {done}")[0][0]  # noqa: S608 - constant
    assert d.post_json("/webhooks/call", data)[0] == 204
    d.wait_runs(done, count + 1)
    row = d.query("SELECT id, state, attempts, error FROM runs WHERE kind = 'action' "
                  "ORDER BY id DESC LIMIT 1")[0]
    return dict(row)


def test_denied_targets_are_refused_with_no_request_sent(make_daemon: Any) -> None:
    """With 127/8 denied but 127.0.0.2 allowed: a loopback target is refused at once (no
    retry, no request), and so is a redirect from the allowed address to a denied one."""
    with Target() as denied, Target("127.0.0.2") as allowed, Target("127.0.0.3") as hop:
        d = make_daemon(CALLER + "http: {deny: [127.0.0.0/8], allow: [127.0.0.2]}\n",
                        env=SECRETS).start()
        refused = call(d, f"{denied.url}/ok")
        assert (refused["state"], refused["attempts"]) == ("failed", 1), refused
        assert refused["error"] == (
            f"http: GET {denied.url}/ok refused: 127.0.0.1:{denied.port} is denied by "
            "http.deny entry '127.0.0.0/8'")
        redirected = call(d, f"{allowed.url}/to?url={hop.url}/ok")
        assert redirected["state"] == "failed", redirected
        assert redirected["error"].endswith(
            f"refused: the redirect to {hop.url}/ok: 127.0.0.3:{hop.port} is denied by "
            "http.deny entry '127.0.0.0/8'")
        assert call(d, f"{allowed.url}/ok")["state"] == "succeeded"
        assert denied.hits == {} and hop.hits == {}
        assert allowed.hits == {"to": 1, "ok": 1}
        assert d.stop() == 0


def test_own_listener_refused_and_secret_headers_dropped_and_redacted(make_daemon: Any) -> None:
    with Target() as first, Target("127.0.0.2") as other:
        d = make_daemon(CALLER, env=SECRETS).start()
        # The daemon's own API, with its admin token: refused by default, nothing created.
        own = call(d, f"{d.url}/api/events", "post", secrets=True,
                   body={"topic": "user/evil/made", "data": 1})
        assert (own["state"], own["attempts"]) == ("failed", 1), own
        assert f"127.0.0.1:{d.port} is the daemon's own listener, denied by default" in own[
            "error"]
        assert d.query("SELECT COUNT(*) FROM events WHERE topic = 'user/evil/made'")[0][0] == 0

        # A redirect to another host (127.0.0.1 → 127.0.0.2): the secret headers stay behind.
        moved = call(d, f"{first.url}/to?url={other.url}/ok", secrets=True)
        assert moved["state"] == "succeeded", moved
        sent = [*SECRET_HEADERS, "Accept", "X-Custom"]
        assert [k for k in sent if k in first.headers["to"]] == sent
        assert [k for k in sent if k in other.headers["ok"]] == ["Accept", "X-Custom"]

        # ... and the run shows them redacted, in the API and the command line alike.
        status, _, api = d.request("GET", f"/api/runs/{moved['id']}", headers=AUTH)
        assert status == 200
        cli = d.cli("runs", "show", str(moved["id"]), "--json")
        assert cli.returncode == 0, cli.stderr
        for shown in (json.loads(api), json.loads(cli.stdout)):
            assert shown["options"]["headers"] == {
                **{k: "[redacted]" for k in SECRET_HEADERS}, "Accept": "application/json",
                "X-Custom": "kept"}
        for text in (api.decode(), cli.stdout, d.logs()):
            assert not any(value in text for value in SECRET_HEADERS.values())
        assert d.stop() == 0
