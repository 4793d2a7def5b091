"""A run that keeps getting interrupted is failed, not requeued forever (SPEC §5's crash safety,
capped): real daemons killed by the very run they perform, restarted by the test.

The poison is an http action to a loopback server that SIGKILLs the daemon performing it, the
way an OOM kill, a segfault in a library or an operator's `kill -9` loop would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from runnerd import models
from runnerd.queue import runs

from . import helpers_servers
from .conftest import Daemon, scrape, value, wait_until
from .test_nodes import Node
from .test_postgres import PgDaemon

MAX = runs.MAX_ATTEMPTS


class Poison(BaseHTTPRequestHandler):
    """Counts its requests; while `kill` is set, SIGKILLs `victim()` instead of answering."""

    hits = 0
    kill = True
    victim: Callable[[], int] | None = None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        cls.hits += 1
        if cls.kill:
            assert cls.victim is not None
            os.kill(cls.victim(), signal.SIGKILL)
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def poison() -> Iterator[int]:
    Poison.hits, Poison.kill, Poison.victim = 0, True, None
    with helpers_servers.http_server(Poison) as port:
        yield port


def config(port: int) -> str:
    return textwrap.dedent(f"""
        http: {{allow: ["127.0.0.1:{port}"]}}
        tasks:
          - name: Poisoned
            subscriptions: user/orders/ready
            code: |
              {{% action "http", method: "GET", url: "http://127.0.0.1:{port}/" %}}
          - name: Alarm
            subscriptions: mechanic/errors/action
            code: |
              {{% action "cache", "set", "alarm", error.message %}}
    """)


ENGINES = pytest.mark.parametrize("engine", ["sqlite", "postgres"])


def on_engine(request: pytest.FixtureRequest, make_daemon: Any, engine: str,
              body: str) -> Daemon:
    """A daemon of `body` on `engine`, not started, its database made."""
    if engine == "postgres":
        d: Daemon = make_daemon(body, PgDaemon, url=request.getfixturevalue("pg_url"))
    else:
        d = make_daemon(body)
        if d.pg_url is not None:  # the engine switch: this one is the PostgreSQL one's
            pytest.skip("runs on SQLite only under the engine switch")
    return d.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def daemon(request: pytest.FixtureRequest, make_daemon: Any, poison: int) -> Daemon:
    """A daemon on SQLite or PostgreSQL, not started, whose Poisoned task's action kills it;
    its database made and an event for Poisoned stored (`runnerd send`)."""
    d = on_engine(request, make_daemon, request.param, config(poison))
    Poison.victim = lambda: d.proc.pid  # type: ignore[union-attr]
    d.cli("send", "user/orders/ready", "--data", '{"id": 1}', check=True)
    return d


def killed_by_its_run(d: Daemon) -> None:
    """Start `d` and wait for the poison to kill it."""
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(timeout=30) == -signal.SIGKILL, d.logs()


def action_run(d: Daemon) -> Any:
    [row] = d.query("SELECT * FROM runs WHERE kind = 'action' AND task_name = 'Poisoned'")
    return row


def test_under_the_cap_an_interrupted_run_is_requeued(daemon: Daemon) -> None:
    d = daemon
    killed_by_its_run(d)
    assert (action_run(d)["state"], action_run(d)["attempts"]) == ("started", 1)
    d.execute("UPDATE runs SET attempts = ? WHERE state = 'started'", (MAX - 1,))
    Poison.kill = False
    d.start()
    d.wait_runs("task_name = 'Poisoned' AND kind = 'action' AND state = 'succeeded'", 1)
    run = action_run(d)
    assert run["attempts"] == MAX  # requeued, then performed: its last attempt, and it worked
    assert Poison.hits == 2
    assert "requeued 1 run(s) left started by a crash" in d.logs()
    assert "interrupted_run_failed" not in d.logs() and "failed: interrupted" not in d.logs()
    assert d.stop() == 0


def test_at_the_cap_an_interrupted_run_fails_with_its_consequences(daemon: Daemon) -> None:
    d = daemon
    killed_by_its_run(d)
    d.execute("UPDATE runs SET attempts = ? WHERE state = 'started'", (MAX,))
    [before] = d.query("SELECT * FROM task_status WHERE name = 'Poisoned'") or [None]
    assert before is None or before["last_status"] is None
    d.start()
    d.wait_runs("task_name = 'Poisoned' AND kind = 'action' AND state = 'failed'", 1)
    run = action_run(d)
    error = (f"interrupted on attempt {MAX} of {MAX} (the daemon stopped or crashed while "
             f"performing it); not retried again: runnerd runs retry {run['id']} to try again")
    assert run["error"] == error and run["attempts"] == MAX and run["finished_at"] is not None
    assert Poison.hits == 1  # decided at start-up, never performed again
    # Its error event reaches the error-handling task, as any failed action run's does.
    wait_until(lambda: d.cli("cache", "get", "alarm").stdout.strip() == json.dumps(error))
    [event] = d.query("SELECT * FROM events WHERE topic = 'mechanic/errors/action'")
    assert json.loads(event["data"])["action"]["run"]["id"] == run["id"]
    # The task's status is failed, and the metrics count the failure.
    [status] = d.query("SELECT * FROM task_status WHERE name = 'Poisoned'")
    assert status["last_status"] == "failed" and status["last_error"].endswith(error)
    assert value(scrape(d), "runnerd_runs", "runnerd_runs_total", kind="action",
                 state="failed") == 1
    line = (f"run {run['id']} (action run of task Poisoned) failed: {error}")
    assert [entry for entry in d.log_lines() if line in entry and "WARNING" in entry], d.logs()
    # A retry by hand performs it again.
    assert d.cli("runs", "retry", str(run["id"])).returncode == 0
    wait_until(lambda: Poison.hits == 2, message="the retry performed")
    assert d.proc is not None and d.proc.wait(timeout=30) == -signal.SIGKILL


def test_a_run_that_kills_its_daemon_every_time_stops_after_max_attempts(
        daemon: Daemon) -> None:
    """The crash loop: each start performs the run again, which kills the daemon, until its
    attempts reach the cap; the next start fails it, and the daemon stays up."""
    d = daemon
    for death in range(1, MAX + 1):
        killed_by_its_run(d)
        assert Poison.hits == death
        assert (action_run(d)["state"], action_run(d)["attempts"]) == ("started", death)
    d.start()
    d.wait_runs("task_name = 'Poisoned' AND kind = 'action' AND state = 'failed'", 1)
    run = action_run(d)
    assert run["error"].startswith(f"interrupted on attempt {MAX} of {MAX} ")
    # The earlier interrupted attempts are kept in run_attempts, the last one is the run's.
    kept = d.query("SELECT attempt, error FROM run_attempts WHERE run_id = ? ORDER BY attempt",
                   (run["id"],))
    assert [r["attempt"] for r in kept] == list(range(1, MAX))
    restarted = f"node {socket.gethostname()} restarted while the run was started"
    assert {r["error"] for r in kept} == {runs.INTERRUPTED if d.pg_url is None else restarted}
    shown = json.loads(d.cli("runs", "show", str(run["id"]), check=True).stdout)
    assert [a["attempt"] for a in shown["failed_attempts"]] == list(range(1, MAX))
    listed = json.loads(d.cli("runs", "--state", "failed", "--json", check=True).stdout)
    assert [r["id"] for r in listed if (r["error"] or "").startswith("interrupted")] == [
        run["id"]]
    assert d.request("GET", "/health")[0] == 200
    assert d.proc is not None and d.proc.poll() is None and Poison.hits == MAX
    assert d.stop() == 0


STUCK = """
tasks:
  - name: Stuck
    subscriptions: user/stuck/now
    code: |
      {% action "echo", ok: true %}
  - name: Alarm
    subscriptions: mechanic/errors/task
    code: |
      {% action "cache", "set", "alarm", error.task.name | append: ": " | append: error.message %}
"""


@ENGINES
def test_a_task_run_left_started_at_the_cap_fails_with_its_error_event(
        request: pytest.FixtureRequest, make_daemon: Any, engine: str) -> None:
    """A task run is rendered while due and never left started by this runnerd; one that is
    (an older runnerd's) fails at the cap as a failed render does: mechanic/errors/task."""
    d = on_engine(request, make_daemon, engine, STUCK)
    d.cli("send", "user/nobody/listens", check=True)  # an event no task takes: the run's event
    [event] = d.query("SELECT id, created_at FROM events")
    d.execute("INSERT INTO runs (kind, state, priority, run_at, event_id, task_name, created_at,"
              " attempts, started_at) VALUES ('task', 'started', 2, ?, ?, 'Stuck', ?, ?, ?)",
              (event["created_at"], event["id"], event["created_at"], MAX, event["created_at"]))
    [row] = d.query("SELECT id FROM runs WHERE kind = 'task'")
    d.start()
    d.wait_runs(f"id = {row['id']} AND state = 'failed'", 1)
    [run] = d.query(f"SELECT * FROM runs WHERE id = {row['id']}")
    assert run["error"] == runs.interrupted_error(models.Run.from_row(dict(run)))
    wait_until(lambda: d.cli("cache", "get", "alarm").stdout.strip() == json.dumps(
        f"Stuck: {run['error']}"))
    [status] = d.query("SELECT * FROM task_status WHERE name = 'Stuck'")
    assert status["last_status"] == "failed"
    assert d.query("SELECT COUNT(*) AS n FROM runs WHERE action_type = 'echo'")[0]["n"] == 0
    assert d.stop() == 0


@pytest.mark.parametrize("attempts", [MAX - 1, MAX])
def test_the_leader_fails_a_dead_nodes_run_out_of_attempts_and_requeues_the_others(
        make_daemon: Any, poison: int, pg_url: str, attempts: int) -> None:
    """PostgreSQL: node a dies of its run; node b, the leader, recovers it once a is silent for
    node_timeout: requeued under the cap (and performed by b), failed at it (b never performs
    it), with the failure's error event, task status and metrics on b."""
    a: Node = make_daemon(config(poison), Node, url=pg_url, name="a")
    Poison.victim = lambda: a.proc.pid  # type: ignore[union-attr]
    a.create_database()
    a.cli("send", "user/orders/ready", "--data", '{"id": 1}', check=True)
    killed_by_its_run(a)
    a.execute("UPDATE runs SET attempts = ? WHERE state = 'started'", (attempts,))
    Poison.kill = False
    b: Node = make_daemon(config(poison), Node, url=pg_url, name="b").start()
    if attempts < MAX:
        b.wait_runs("task_name = 'Poisoned' AND kind = 'action' AND state = 'succeeded'", 1)
        assert action_run(b)["attempts"] == MAX and Poison.hits == 2
        assert any("requeued 1 run(s) of lost node(s)" in line for line in b.log_lines())
    else:
        b.wait_runs("task_name = 'Poisoned' AND kind = 'action' AND state = 'failed'", 1)
        run = action_run(b)
        assert run["error"].startswith(f"interrupted on attempt {MAX} of {MAX} ")
        assert run["node"] == "a" and run["attempts"] == MAX and Poison.hits == 1
        wait_until(lambda: b.cli("cache", "get", "alarm").stdout.strip() == json.dumps(
            run["error"]))
        [status] = b.query("SELECT * FROM task_status WHERE name = 'Poisoned'")
        assert status["last_status"] == "failed"
        assert value(scrape(b), "runnerd_runs", "runnerd_runs_total", kind="action",
                     state="failed") == 1
        assert any(f"run {run['id']} (action run of task Poisoned) failed: interrupted" in line
                   for line in b.log_lines())
    assert b.stop() == 0
