"""PostgreSQL outages under a running daemon (SPEC §14): the server stopped (cleanly or crashed)
or its connections terminated. Every request that needs the database answers 503 with
Retry-After, never 204/200 without a commit; /health says which database and why; the daemon
re-opens its connections by itself once the server is back, and nothing accepted is lost.

Each test has its own server (helpers_postgres.server, fsync on: it is stopped and crashed), not
the session's one the other tests share."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runnerd import errors
from runnerd.store import db

from . import helpers_postgres
from .conftest import require, wait_until
from .reliability.helpers import Target
from .test_postgres import PgDaemon

AUTH = {"Authorization": "Bearer t0ken"}

CONFIG = """
admin_token: t0ken
concurrency: 2
webhooks:
  - {name: orders, topic: user/orders/ready}
  - {name: slow, topic: user/slow/call}
monitors:
  - {name: backup, period: 1h, grace: 10m}
tasks:
  - name: Counter
    subscriptions: user/orders/ready
    code: |
      {% assign seen = cache["orders"] | default: 0 %}
      {% action "cache", "incr", "orders" %}
      {% action "echo", seen: seen %}
  - name: Slow
    subscriptions: user/slow/call
    code: |
      {% action "http", method: "get", url: "URL/slow?s=3" %}
"""


@pytest.fixture
def own_server() -> Iterator[helpers_postgres.Server]:
    """A server of this test's own, with fsync on (it is crashed with -m immediate)."""
    with helpers_postgres.server(fsync=True) as own:
        require(not isinstance(own, str), str(own))
        assert isinstance(own, helpers_postgres.Server)
        yield own


@pytest.fixture
def daemon(tmp_path: Path, own_server: helpers_postgres.Server) -> Iterator[PgDaemon]:
    with Target() as target:
        d = PgDaemon(tmp_path, CONFIG.replace("URL", target.url), own_server.new_database())
        d.target = target  # type: ignore[attr-defined]
        try:
            d.start()
            yield d
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.kill()


def _refused(d: PgDaemon) -> None:
    """Every request that must write or read the database: 503 with Retry-After."""
    requests: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/webhooks/orders", {"i": -1}, {}),
        ("GET", "/ping/backup", None, {}),
        ("POST", "/api/events", {"topic": "user/orders/ready", "data": None}, AUTH),
        ("GET", "/api/queue", None, AUTH),
        ("GET", "/api/runs", None, AUTH),
    ]
    for method, path, body, headers in requests:
        status, got, text = (d.post_json(path, body, headers) if body is not None
                             else d.request(method, path, headers=headers))
        assert status == 503, (path, status, text)
        assert got.get("Retry-After") == "5", (path, got)


def _unhealthy(d: PgDaemon) -> list[str]:
    status, headers, body = d.request("GET", "/health")
    if status != 503:
        return []
    assert headers.get("Retry-After") == "5"
    problems: list[str] = json.loads(body)["problems"]
    return problems


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_server_stopped_under_the_daemon_means_503s_then_recovery_by_itself(
        daemon: PgDaemon, own_server: helpers_postgres.Server, mode: str) -> None:
    d = daemon
    accepted = []
    for i in range(5):
        status, headers, _ = d.post_json("/webhooks/orders", {"i": i})
        assert status == 204
        accepted.append(headers["X-Request-Id"])
    own_server.halt(mode)
    _refused(d)
    problems = wait_until(lambda: _unhealthy(d), message="/health 503")
    [why] = [p for p in problems if p.startswith("database unwritable")]
    assert db.redact(d.database) in why and why != "database unwritable", problems  # names both
    _refused(d)  # still refused, at once (no wait on a server that is gone)

    own_server.resume()
    wait_until(lambda: d.request("GET", "/health")[0] == 200, timeout=30,
               message="/health 200 again, without a restart")
    for i in range(5, 8):  # the same process takes webhooks again
        status, headers, _ = d.post_json("/webhooks/orders", {"i": i})
        assert status == 204
        accepted.append(headers["X-Request-Id"])
    assert d.request("GET", "/ping/backup")[0] == 200
    assert d.request("GET", "/api/queue", headers=AUTH)[0] == 200
    d.wait_runs("kind = 'action' AND action_type = 'cache' AND state = 'succeeded'", 8,
                timeout=30)
    stored = {r["webhook_request_id"] for r in d.query(
        "SELECT webhook_request_id FROM events WHERE webhook_request_id IS NOT NULL")}
    assert stored == set(accepted)  # every 204 stored, no 503'd one
    assert int(d.cli("cache", "get", "orders").stdout) == 8
    lines = d.log_lines()
    assert sum("unreachable" in line for line in lines) == 1, d.logs()  # one line per change
    assert sum("reachable again" in line for line in lines) == 1, d.logs()
    assert d.stop() == 0, d.logs()


def test_outcomes_kept_through_an_outage_are_written_on_recovery(
        daemon: PgDaemon, own_server: helpers_postgres.Server) -> None:
    """An http action finishing while the server is down: its outcome is kept in memory and
    written once the server is back; the request is not made again."""
    d = daemon
    target: Target = d.target  # type: ignore[attr-defined]
    assert d.post_json("/webhooks/slow", {})[0] == 204
    wait_until(lambda: target.in_flight == 1, message="the slow request in flight")
    own_server.halt("fast")
    wait_until(lambda: target.hits.get("slow") == 1 and target.in_flight == 0, timeout=10,
               message="the slow request answered during the outage")
    own_server.resume()
    d.wait_runs("kind = 'action' AND action_type = 'http' AND state = 'succeeded'", 1,
                timeout=30)
    [run] = d.query("SELECT attempts, error FROM runs WHERE action_type = 'http'")
    assert dict(run) == {"attempts": 1, "error": None}
    assert target.hits["slow"] == 1
    assert d.stop() == 0, d.logs()


def test_terminated_connections_are_replaced_while_the_server_is_up(
        daemon: PgDaemon, own_server: helpers_postgres.Server) -> None:
    """pg_terminate_backend on every connection the daemon uses (its lock's aside): the next
    requests find them gone and open new ones, answering as if nothing happened."""
    import psycopg

    d = daemon
    assert d.post_json("/webhooks/orders", {"i": 0})[0] == 204
    d.wait_runs("kind = 'action' AND action_type = 'echo' AND state = 'succeeded'", 1)
    mine = "application_name LIKE 'runnerd pid %%' AND datname = current_database()"
    with psycopg.connect(d.database, autocommit=True) as conn:
        killed = conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              f"WHERE {mine}").fetchall()
        assert len(killed) >= 3  # the writer, the reader, the event loop's reader
        wait_until(lambda: conn.execute(
            f"SELECT COUNT(*) FROM pg_stat_activity WHERE {mine}").fetchone() == (0,),
            message="the backends gone")
    for i in range(1, 4):
        assert d.post_json("/webhooks/orders", {"i": i})[0] == 204
    assert d.request("GET", "/api/queue", headers=AUTH)[0] == 200
    d.wait_runs("kind = 'action' AND action_type = 'echo' AND state = 'succeeded'", 4)
    seen = sorted(json.loads(r["options"])["seen"]
                  for r in d.query("SELECT options FROM runs WHERE action_type = 'echo'"))
    assert seen == [0, 1, 2, 3]  # the render's cache reads work on the new connection
    assert d.request("GET", "/health")[0] == 200
    assert "unreachable" not in d.logs()  # the server never was
    assert d.stop() == 0, d.logs()


def test_a_server_down_at_start_up_is_exit_1_with_one_line(
        tmp_path: Path, own_server: helpers_postgres.Server) -> None:
    """systemd's Restart= retries: `runnerd run` does not wait for the server."""
    d = PgDaemon(tmp_path, "", own_server.new_database())
    own_server.halt("fast")
    done = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(d.config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"cannot open database {db.redact(d.database)}" in done.stderr


async def test_a_render_reading_an_unreachable_database_is_retried_not_failed(
        own_server: helpers_postgres.Server, tmp_path: Path) -> None:
    """The event loop's reader (the cache a render reads) with its server gone: a DatabaseError
    naming the database, which the render lets through (not the template's error) and the task
    run's handler makes a retryable outcome; the same reader works again once the server is
    back."""
    from runnerd import actions, config, models
    from runnerd.engine import run_kinds
    from runnerd.liquid import render
    from runnerd.queue import runs
    from runnerd.store import backends, cache
    from runnerd.tasks import registry

    database = await backends.open_database(Path("unused"), own_server.new_database()).open()
    path = tmp_path / "runnerd.yaml"
    path.write_text("database: unused.db\ntasks:\n  - {name: Reads, subscriptions: user/a/b, "
                    "code: '{% log cache.n %}'}\n")
    renderer = render.Renderer(timezone="UTC", clock=lambda: 0.0)
    reg = registry.Registry(config.load(path, {}), renderer)
    try:
        await database.migrate()
        reader = database.sync_reader()
        handlers = run_kinds.Handlers(lambda: reg, actions.Registry(), reader=reader,
                                      clock=lambda: 0.0)
        event = runs.new_event("user/a/b", None, "cli", 0.0)
        run = models.Run(id=1, kind=models.RunKind.TASK, state=models.RunState.STARTED,
                         priority=2, run_at=0.0, event_id=event.id, task_name="Reads",
                         action_type=None, options=None, meta=None, perform_event=False,
                         result=None, error=None, attempts=1, created_at=0.0, started_at=0.0,
                         finished_at=None)
        template = renderer.compile('{% log cache["n"] %}', name="demo")
        assert renderer.render(template, {"cache": cache.View(reader, 0.0)}).logs == [None]
        assert handlers.task_run(runs.Job(run, event)).ok
        own_server.halt("fast")
        with pytest.raises(errors.DatabaseError, match=re.escape(database.label)):
            renderer.render(template, {"cache": cache.View(reader, 0.0)})
        outcome = handlers.task_run(runs.Job(run, event))
        assert not outcome.ok and outcome.retryable, outcome.error
        assert outcome.error is not None and outcome.error.startswith("not rendered: ")
        own_server.resume()
        await database.write(lambda tx: tx.execute("cache_set", {
            "key": "n", "value": "7", "expires_at": float("inf")}))
        assert renderer.render(template, {"cache": cache.View(reader, 0.0)}).logs == [7]
        reader.close()
    finally:
        await database.close()


def _name_lock_holders(d: PgDaemon) -> list[str]:
    """The application names of the sessions holding an advisory lock on the daemon's database
    other than the migrations' (a node's name's lock: `store.pg.lock`)."""
    from runnerd.store import pg

    return [r["name"] for r in d.query(
        "SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a"
        " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
        " AND a.datname = current_database()"
        " AND (l.classid::bigint << 32 | l.objid::bigint) <> ?", (pg.MIGRATE_LOCK,))]


def _twin(d: PgDaemon, tmp_path: Path) -> PgDaemon:
    """A second daemon with the same configuration (so the same node name) and database."""
    home = tmp_path / "twin"
    home.mkdir()
    return PgDaemon(home, CONFIG, d.database)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_name_lock_is_taken_again_after_a_server_restart(
        daemon: PgDaemon, own_server: helpers_postgres.Server, tmp_path: Path,
        mode: str) -> None:
    """A restart ends the lock's session; the node takes its name again once the server is
    back, so a second process with the same name is refused as at start-up."""
    d = daemon
    assert d.proc is not None
    mine = [f"runnerd node {socket.gethostname()} pid {d.proc.pid}"]
    assert _name_lock_holders(d) == mine
    own_server.halt(mode)
    own_server.resume()
    wait_until(lambda: _name_lock_holders(d) == mine, timeout=30,
               message="the name's lock held again")
    twin = _twin(d, tmp_path)
    done = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(twin.config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"(pid {d.proc.pid} on {socket.gethostname()}) is already running" in done.stderr
    assert d.request("GET", "/health")[0] == 200
    assert sum("lost its name's lock" in line for line in d.log_lines()) == 1, d.logs()
    assert d.stop() == 0, d.logs()


def test_a_node_whose_name_was_taken_during_an_outage_stops_with_one_line(
        daemon: PgDaemon, own_server: helpers_postgres.Server, tmp_path: Path) -> None:
    """The node is frozen (SIGSTOP) across the restart while a second process starts with its
    name: woken, it finds the name taken and stops in order, exit 1, naming the other."""
    d = daemon
    assert d.proc is not None
    assert d.post_json("/webhooks/orders", {"i": 0})[0] == 204
    d.wait_runs("kind = 'action' AND action_type = 'echo' AND state = 'succeeded'", 1)
    d.proc.send_signal(signal.SIGSTOP)
    try:
        own_server.halt("fast")
        own_server.resume()
        twin = _twin(d, tmp_path).start()
    finally:
        d.proc.send_signal(signal.SIGCONT)
    try:
        rc = d.proc.wait(timeout=40)
        assert rc == 1, d.logs()
        assert twin.proc is not None
        last = d.log_lines()[-1]
        assert last == (f"runnerd: another runnerd node named {socket.gethostname()!r} "
                        f"(pid {twin.proc.pid} on {socket.gethostname()}) is already running "
                        f"on {db.redact(d.database)}"), d.logs()
        assert twin.post_json("/webhooks/orders", {"i": 1})[0] == 204  # the name's one node
        twin.wait_runs("kind = 'action' AND action_type = 'echo' AND state = 'succeeded'", 2)
        assert _name_lock_holders(d) == [f"runnerd node {socket.gethostname()} pid "
                                         f"{twin.proc.pid}"]
        assert twin.request("GET", "/health")[0] == 200
        assert twin.stop() == 0, twin.logs()
    finally:
        if twin.proc is not None and twin.proc.poll() is None:
            twin.kill()


def test_the_console_answers_503_with_retry_after_while_the_server_is_down(
        daemon: PgDaemon, own_server: helpers_postgres.Server) -> None:
    """As webhooks, pings and /api: the problem page with `Retry-After: 5`."""
    from .console_client import Client

    d = daemon
    c = Client(d.port)
    assert c.login("t0ken")[0] == 303
    assert c.get("/console/runs")[0] == 200
    own_server.halt("fast")
    for path in ("/console/", "/console/runs", "/console/queue"):
        status, headers, body = c.get(path)
        assert status == 503 and headers.get("Retry-After") == "5", (path, status, headers)
        assert "database" in body, body
    anonymous = Client(d.port)
    status, headers, _ = anonymous.login("t0ken")  # the sessions are in the database too
    assert status == 503 and headers.get("Retry-After") == "5", (status, headers)
    own_server.resume()
    wait_until(lambda: c.get("/console/runs")[0] == 200, timeout=30,
               message="the console back without a restart")
    assert d.stop() == 0, d.logs()
