"""SPEC promises that had no test of their own, each checked where users see it.

The real daemon as a process (SIGTERM, the real clock, triggers, Liquid's `event`, /metrics,
manual retries) against real loopback HTTP servers; the sqlite3 views on a migrated file.
Every wait polls with a deadline; nothing sleeps a fixed time to let something happen.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import re
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runnerd.store import db

from .conftest import Daemon, scrape, value, wait_until
from .reliability.helpers import Target

AUTH = {"Authorization": "Bearer t0ken"}


def _rows(d: Daemon, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return [dict(r) for r in d.query(sql, params)]


# --- §4: SIGTERM lets a short started run finish within the grace period ---------------------

SHORT = """
concurrency: 2
shutdown_grace: 6s
tasks:
  - name: Slow
    subscriptions: user/slow/call
    code: |
      {% action "http", method: "get", url: "URL/slow?s=1" %}
"""


def test_sigterm_lets_a_short_started_run_finish_within_the_grace(make_daemon) -> None:
    with Target() as target:
        d: Daemon = make_daemon(SHORT.replace("URL", target.url)).start()
        assert d.cli("send", "user/slow/call").returncode == 0
        wait_until(lambda: target.in_flight >= 1, timeout=8, message="the slow request in flight")
        assert _rows(d, "SELECT state FROM runs WHERE action_type = 'http'") == [
            {"state": "started"}]
        began = time.monotonic()
        code = d.stop(signal.SIGTERM, timeout=15)
        took = time.monotonic() - began
        assert code == 0, d.logs()
        # It waited for the request (about 1 s) instead of cutting it off...
        assert target.in_flight == 0 and target.hits == {"slow": 1}
        # ...and recorded it: succeeded once, not put back to due to be performed again.
        http_run = _rows(d, "SELECT state, attempts, error, result FROM runs "
                            "WHERE action_type = 'http'")
        assert len(http_run) == 1, http_run
        assert (http_run[0]["state"], http_run[0]["attempts"], http_run[0]["error"]) == (
            "succeeded", 1, None), (http_run, took)
        assert json.loads(http_run[0]["result"])["status"] == 200
        assert _rows(d, "SELECT id, kind, state FROM runs WHERE state NOT IN "
                        "('succeeded', 'failed')") == []
        assert took < 6 + 3, took  # within the grace (plus the listener's drain)


# --- §4: a scheduled run moves to due within one second (the real clock) ---------------------

LATER = """
webhooks:
  - {name: orders, topic: user/orders/ready}
tasks:
  - name: In 1 s
    subscriptions: user/orders/ready+1.second
    code: '{% action "cache", "set", "in1", event.data.n %}'
  - name: In 2 s
    subscriptions: user/orders/ready+2.seconds
    code: '{% action "cache", "set", "in2", event.data.n %}'
  - name: In 3 s
    subscriptions: user/orders/ready+3.seconds
    code: '{% action "cache", "set", "in3", event.data.n %}'
"""

#: Polling the file costs a few milliseconds: what a transition at run_at + 1 s may look like.
OBSERVE_SLACK = 0.15


def _watch_until_not_scheduled(d: Daemon, ids: set[int], deadline: float
                               ) -> tuple[set[int], dict[int, float]]:
    """Poll `runs` until every run of `ids` has left `scheduled`; return the ids seen
    `scheduled` and, per id, a wall-clock time by which it had left (an upper bound)."""
    seen_scheduled: set[int] = set()
    left: dict[int, float] = {}
    while len(left) < len(ids):
        marks = ",".join("?" * len(ids))
        rows = d.query(f"SELECT id, state FROM runs WHERE id IN ({marks})", tuple(sorted(ids)))
        observed = time.time()
        for run_id, state in rows:
            if state == "scheduled":
                seen_scheduled.add(run_id)
            elif run_id not in left:
                left[run_id] = observed
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return seen_scheduled, left


def test_scheduled_runs_become_due_within_a_second_of_run_at(make_daemon) -> None:
    d: Daemon = make_daemon(LATER).start()
    status, headers, _ = d.post_json("/webhooks/orders", {"n": 7})
    assert status == 204
    event = _rows(d, "SELECT id, created_at FROM events WHERE webhook_request_id = ?",
                  (headers["X-Request-Id"],))[0]
    tasks = {r["task_name"]: r for r in _rows(
        d, "SELECT id, task_name, state, run_at FROM runs WHERE kind = 'task' AND event_id = ?",
        (event["id"],))}
    assert set(tasks) == {"In 1 s", "In 2 s", "In 3 s"}
    for offset, name in enumerate(("In 1 s", "In 2 s", "In 3 s"), start=1):
        assert tasks[name]["state"] == "scheduled"
        assert abs(tasks[name]["run_at"] - (event["created_at"] + offset)) < 0.5
    ids = {r["id"] for r in tasks.values()}
    seen_scheduled, left = _watch_until_not_scheduled(d, ids, time.monotonic() + 8)
    assert seen_scheduled == ids  # each waited in `scheduled` first...
    assert set(left) == ids, f"still scheduled: {ids - set(left)}"
    d.wait_runs("kind = 'task' AND state = 'succeeded'", 3, timeout=5)
    for name, row in tasks.items():
        run_at = row["run_at"]
        started_at = d.query("SELECT started_at FROM runs WHERE id = ?", (row["id"],))[0][0]
        # ...not one moment early, and then due (here: started at once, slots are free) within
        # one second. Three runs a second apart: a slower promotion loop cannot meet all three.
        assert run_at <= started_at < run_at + 1.0, (name, started_at - run_at)
        assert left[row["id"]] - run_at < 1.0 + OBSERVE_SLACK, (name, left[row["id"]] - run_at)
    for key in ("in1", "in2", "in3"):
        assert d.cli("cache", "get", key).stdout.strip() == "7"
    assert d.stop() == 0


BUSY = """
concurrency: 1
webhooks:
  - {name: later, topic: user/later/run}
tasks:
  - name: Slow
    subscriptions: user/slow/call
    code: |
      {% action "http", method: "get", url: "URL/slow?s=4" %}
  - name: Later
    subscriptions: user/later/run
    code: '{% action "event", topic: "user/later/fired", data: null, run_at: event.data.at %}'
"""


def test_a_scheduled_run_becomes_due_on_time_even_while_every_slot_is_busy(make_daemon) -> None:
    with Target() as target:
        d: Daemon = make_daemon(BUSY.replace("URL", target.url)).start()
        assert d.cli("send", "user/slow/call").returncode == 0
        wait_until(lambda: target.in_flight >= 1, timeout=8, message="the slow request in flight")
        # The task run takes no slot: it renders at once and stores an event for 1.5 s from
        # now, whose event run waits `scheduled`; once due, it is routed without a slot too.
        status, headers, _ = d.post_json("/webhooks/later", {"at": round(time.time() + 1.5, 3)})
        assert status == 204
        query = ("SELECT r.id, r.state, r.run_at FROM runs r JOIN events e ON e.id = r.event_id "
                 "JOIN events p ON p.id = e.parent_id WHERE e.topic = 'user/later/fired' "
                 "AND p.webhook_request_id = ?")
        wait_until(lambda: _rows(d, query, (headers["X-Request-Id"],)), timeout=5,
                   message="the task run's event stored")
        [later] = _rows(d, query, (headers["X-Request-Id"],))
        assert later["state"] == "scheduled"
        _, left = _watch_until_not_scheduled(
            d, {later["id"]}, time.monotonic() + (later["run_at"] - time.time()) + 1.5)
        assert target.in_flight >= 1, "the slow request ended too early: the slot was free"
        assert later["id"] in left, "still scheduled over a second after its run_at"
        assert left[later["id"]] - later["run_at"] < 1.0 + OBSERVE_SLACK
        assert d.query("SELECT state FROM runs WHERE id = ?", (later["id"],))[0][0] == "succeeded"
        assert target.in_flight >= 1, "routed while the only slot was still busy"


# --- §3/§11: a trigger goes to one task only ---------------------------------------------------

TRIGGERED = """
admin_token: t0ken
tasks:
  - name: Alpha
    subscriptions: |
      mechanic/user/trigger
      mechanic/user/text
    code: |
      {% action "cache", "incr", "alpha" %}
      {% action "echo", topic: event.topic, data: event.data %}
  - name: Beta
    subscriptions: |
      mechanic/user/trigger
      mechanic/user/text
    code: |
      {% action "cache", "incr", "beta" %}
      {% action "echo", topic: event.topic, data: event.data %}
"""


def _tree(d: Daemon, event_id: str) -> list[tuple[str, str | None, str | None, str]]:
    return [(r["kind"], r["task_name"], r["action_type"], r["state"]) for r in d.query(
        "SELECT kind, task_name, action_type, state FROM runs WHERE event_id = ? ORDER BY id",
        (event_id,))]


def test_api_and_cli_triggers_reach_only_the_named_task(make_daemon) -> None:
    d: Daemon = make_daemon(TRIGGERED).start()
    # POST /api/tasks/{name}/trigger: 201 with the event id; mechanic/user/trigger, no data.
    status, _, body = d.request("POST", "/api/tasks/Alpha/trigger", headers=AUTH)
    assert status == 201, body
    answer = json.loads(body)
    assert set(answer) == {"id"}
    event_id = answer["id"]
    d.wait_runs(f"event_id = '{event_id}' AND kind = 'action' AND state = 'succeeded'", 2)
    [event] = _rows(d, "SELECT topic, data, source FROM events WHERE id = ?", (event_id,))
    data = None if event["data"] is None else json.loads(event["data"])  # SQL NULL or JSON null
    assert (event["topic"], data, event["source"]) == ("mechanic/user/trigger", None, "api")
    assert _tree(d, event_id) == [
        ("event", None, None, "succeeded"), ("task", "Alpha", None, "succeeded"),
        ("action", "Alpha", "cache", "succeeded"), ("action", "Alpha", "echo", "succeeded")]
    # The same with {"text": ...}: mechanic/user/text, data = the text, still to Alpha only.
    status, _, body = d.post_json("/api/tasks/Alpha/trigger", {"text": "from the api"}, AUTH)
    assert status == 201, body
    text_id = json.loads(body)["id"]
    d.wait_runs(f"event_id = '{text_id}' AND kind = 'action' AND state = 'succeeded'", 2)
    assert [r["task_name"] for r in _rows(d, "SELECT task_name FROM runs WHERE event_id = ? "
                                             "AND kind = 'task'", (text_id,))] == ["Alpha"]
    # `runnerd trigger Beta --text S` while both tasks subscribe to mechanic/user/text: SPEC §3
    # sends it to *one* task, the named one.
    out = d.cli("trigger", "Beta", "--text", "hello\nthere")
    assert out.returncode == 0, out.stderr
    cli_id = out.stdout.strip()
    assert str(uuid.UUID(cli_id)) == cli_id
    d.wait_runs(f"event_id = '{cli_id}' AND kind = 'action' AND state = 'succeeded'", 2)
    [event] = _rows(d, "SELECT topic, data, source FROM events WHERE id = ?", (cli_id,))
    assert (event["topic"], json.loads(event["data"]), event["source"]) == (
        "mechanic/user/text", "hello\nthere", "cli")
    assert _tree(d, cli_id) == [
        ("event", None, None, "succeeded"), ("task", "Beta", None, "succeeded"),
        ("action", "Beta", "cache", "succeeded"), ("action", "Beta", "echo", "succeeded")]
    echo = d.query("SELECT result FROM runs WHERE event_id = ? AND action_type = 'echo'",
                   (cli_id,))[0][0]
    assert json.loads(echo) == {"topic": "mechanic/user/text", "data": "hello\nthere"}
    # Three triggers, three task runs in all, each on its own task: nobody else ran.
    assert [tuple(r) for r in d.query("SELECT task_name, COUNT(*) FROM runs WHERE kind = 'task' "
                                      "GROUP BY task_name ORDER BY task_name")] == [
        ("Alpha", 2), ("Beta", 1)]
    assert d.cli("cache", "get", "alpha").stdout.strip() == "2"
    assert d.cli("cache", "get", "beta").stdout.strip() == "1"
    assert d.stop() == 0


# --- §3: event.id, event.source and event.created_at in Liquid ---------------------------------

_SEEN_CODE = ('{% action "echo", id: event.id, source: event.source, '
              'created_at: event.created_at, topic: event.topic %}')
SOURCES = f"""
admin_token: t0ken
webhooks:
  - {{name: seen, topic: user/seen/hook}}
tasks:
  - name: Seer
    subscriptions: |
      user/seen/hook
      user/seen/cli
      user/seen/api+1.second
      user/seen/child
    code: '{_SEEN_CODE}'
  - name: Spawner
    subscriptions: user/seen/hook
    code: '{{% action "event", topic: "user/seen/child", data: 1 %}}'
  - name: Failing
    subscriptions: user/seen/cli
    code: '{{% error "on purpose" %}}'
  - name: Error seer
    subscriptions: mechanic/errors/task
    code: '{_SEEN_CODE}'
"""

ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def test_event_id_source_and_created_at_are_readable_in_liquid(make_daemon) -> None:
    d: Daemon = make_daemon(SOURCES).start()
    assert d.post_json("/webhooks/seen", {"a": 1})[0] == 204
    assert d.cli("send", "user/seen/cli").returncode == 0
    assert d.post_json("/api/events", {"topic": "user/seen/api", "data": None}, AUTH)[0] == 201
    # hook, child (its event action), cli, api (an offset: rendered a second after its
    # creation) and the error of Failing's run.
    d.wait_runs("action_type = 'echo' AND state = 'succeeded'", 5, timeout=8)
    seen = _rows(d, """
        SELECT r.task_name, r.result, e.id, e.topic, e.source, e.created_at
        FROM runs r JOIN events e ON e.id = r.event_id
        WHERE r.action_type = 'echo' ORDER BY r.id""")
    assert {r["source"] for r in seen} == {"webhook", "action", "cli", "api", "runnerd"}
    for row in seen:
        got = json.loads(row["result"])
        assert got["topic"] == row["topic"]
        assert got["id"] == row["id"] and str(uuid.UUID(got["id"])) == got["id"], row
        assert got["source"] == row["source"], row
        assert isinstance(got["created_at"], str) and ISO_8601.match(got["created_at"]), row
        when = dt.datetime.fromisoformat(got["created_at"])
        assert when.utcoffset() is not None, row
        # The event's creation (not the render's moment: user/seen/api renders 1 s later).
        assert abs(when.timestamp() - row["created_at"]) < 0.002, row
    assert {r["task_name"] for r in seen} == {"Seer", "Error seer"}
    assert d.stop() == 0


# --- §9: the views --------------------------------------------------------------------------

T0 = 1_750_000_000  # whole seconds: datetime(x, 'unixepoch') shows no fraction


def _fmt(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def test_views_show_runs_by_state(database: db.Database, tmp_path: Path) -> None:
    events = [("e-a", "user/views/a"), ("e-b", "user/views/b")]
    # (kind, state, priority, run_at, event, task, action type, attempts, error, started,
    #  finished), ids 1.. in this order
    runs_ = [
        ("event", "succeeded", 1, T0, "e-a", None, None, 1, None, T0, T0),
        ("task", "failed", 2, T0, "e-a", "Alpha", None, 1, "boom", T0 + 1, T0 + 2),
        ("task", "started", 2, T0 + 5, "e-a", "Beta", None, 2, None, T0 + 6, None),
        ("action", "due", 3, T0 + 7, "e-a", "Beta", "echo", 0, None, None, None),
        ("action", "scheduled", 3, T0 + 100, "e-b", "Beta", "http", 1, "refused", None, None),
        ("task", "unscheduled", 2, T0 + 50, "e-b", "Gamma", None, 0, None, None, None),
        ("action", "failed", 3, T0 + 3, "e-b", "Alpha", "cache", 5, "gave up", T0 + 390,
         T0 + 400),
        ("task", "succeeded", 2, T0 + 1, "e-b", "Delta", None, 1, None, T0 + 1, T0 + 2),
        ("event", "due", 1, T0 + 8, "e-b", None, None, 0, None, None, None),
        ("action", "due", 3, T0 + 4, "e-b", "Gamma", "email", 0, None, None, None),
        ("action", "started", 3, T0 + 9, "e-b", "Gamma", "http", 1, None, T0 + 10, None),
    ]
    conn = sqlite3.connect(tmp_path / "test.db")  # the migrated file, beside the daemon's own
    try:
        with conn:
            conn.executemany("INSERT INTO events (id, topic, data, source, created_at) "
                             "VALUES (?, ?, 'null', 'cli', ?)", [(i, t, T0) for i, t in events])
            conn.executemany(
                "INSERT INTO runs (kind, state, priority, run_at, event_id, task_name, "
                "action_type, attempts, error, started_at, finished_at, created_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {T0})", runs_)
        ids = [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY id")]
        assert len(ids) == len(runs_)
        run = dict(zip(range(1, len(runs_) + 1), runs_, strict=True))
        topic = dict(events)

        def select(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(sql)]

        # pending_runs: unscheduled, scheduled and due, with the event's topic, times formatted.
        pending = [i for i, r in run.items() if r[1] in ("unscheduled", "scheduled", "due")]
        assert select("SELECT id, kind, state, priority, run_at, task_name, action_type, topic, "
                      "attempts, error FROM pending_runs ORDER BY id") == [
            (i, run[i][0], run[i][1], run[i][2], _fmt(run[i][3]), run[i][5], run[i][6],
             topic[run[i][4]], run[i][7], run[i][8]) for i in pending]
        assert pending == [4, 5, 6, 9, 10]
        # active_runs: started runs, with when they started.
        assert select("SELECT id, kind, task_name, action_type, topic, attempts, started_at "
                      "FROM active_runs ORDER BY id") == [
            (3, "task", "Beta", None, "user/views/a", 2, _fmt(T0 + 6)),
            (11, "action", "Gamma", "http", "user/views/b", 1, _fmt(T0 + 10))]
        # failed_runs: failed runs, with their error and when they failed.
        assert select("SELECT id, kind, task_name, action_type, topic, attempts, error, "
                      "finished_at FROM failed_runs ORDER BY id") == [
            (2, "task", "Alpha", None, "user/views/a", 1, "boom", _fmt(T0 + 2)),
            (7, "action", "Alpha", "cache", "user/views/b", 5, "gave up", _fmt(T0 + 400))]
        # queue_stats: runs per kind and state, and the oldest run_at of each group.
        expected: dict[tuple[str, str], list[int]] = {}
        for r in runs_:
            expected.setdefault((r[0], r[1]), []).append(r[3])
        assert select("SELECT kind, state, runs, oldest_run_at FROM queue_stats "
                      "ORDER BY kind, state") == [
            (kind, state, len(at), _fmt(min(at))) for (kind, state), at in sorted(
                expected.items())]
        assert ("action", "due", 2, _fmt(T0 + 4)) in select(
            "SELECT kind, state, runs, oldest_run_at FROM queue_stats")
    finally:
        conn.close()


# --- §8: runnerd_queue_lag_seconds ----------------------------------------------------------

LAG = """
concurrency: 1
tasks:
  - name: Slow
    subscriptions: user/slow/call
    code: |
      {% action "http", method: "get", url: "URL/slow?s=2.5" %}
  - name: Quick
    subscriptions: user/quick/call
    code: '{% action "http", method: "get", url: "URL/ok" %}'
"""


def test_queue_lag_is_the_age_of_the_oldest_due_run_and_0_when_none_waits(make_daemon) -> None:
    with Target() as target:
        d: Daemon = make_daemon(LAG.replace("URL", target.url)).start()
        assert d.cli("send", "user/slow/call").returncode == 0
        wait_until(lambda: target.in_flight >= 1, timeout=8, message="the slow request in flight")
        # The only slot is taken: the http run of an event sent now waits, due.
        assert d.cli("send", "user/quick/call").returncode == 0
        [waiting] = wait_until(lambda: _rows(d, "SELECT id, kind, run_at FROM runs "
                                                "WHERE state = 'due' AND kind = 'action'"),
                               timeout=5, message="the quick http run due")
        assert [r["id"] for r in _rows(d, "SELECT id FROM runs WHERE state = 'due'")] == [
            waiting["id"]]
        before = time.time()
        families = scrape(d)
        after = time.time()
        assert target.in_flight >= 1 and d.query(
            "SELECT state FROM runs WHERE id = ?", (waiting["id"],))[0][0] == "due", \
            "the slot freed before the scrape: nothing was waiting"
        lag = value(families, "runnerd_queue_lag_seconds", "runnerd_queue_lag_seconds")
        assert value(families, "runnerd_queue_runs", "runnerd_queue_runs", kind="action",
                     state="due") == 1
        # The age of that run (not of the started one, nor of its event's creation, nor 0).
        assert before - waiting["run_at"] - 0.05 <= lag <= after - waiting["run_at"] + 0.05, (
            lag, before - waiting["run_at"], after - waiting["run_at"])
        assert lag > 0
        d.wait_runs("action_type = 'http' AND state = 'succeeded'", 2, timeout=8)
        assert d.query("SELECT COUNT(*) FROM runs WHERE state IN "
                       "('unscheduled', 'scheduled', 'due', 'started')")[0][0] == 0

        def empty() -> dict[str, Any] | None:
            f = scrape(d)  # the snapshot is cached for 2 s: wait for one of an empty queue
            queued = sum(s.value for s in f["runnerd_queue_runs"].samples)
            return f if queued == 0 else None

        assert value(wait_until(empty, timeout=6, interval=0.2, message="an empty queue"),
                     "runnerd_queue_lag_seconds", "runnerd_queue_lag_seconds") == 0
        assert d.stop() == 0


# --- §4: a retried action run keeps its original options -----------------------------------

class _Switchable(http.server.ThreadingHTTPServer):
    """Loopback HTTP: in mode "loop" every request is redirected to itself (aiohttp gives up:
    too many redirects, a permanent failure); in mode "ok" it is recorded and answered 200."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SwitchableHandler)
        self.mode = "loop"
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r["path"] for r in self.received]


class _SwitchableHandler(http.server.BaseHTTPRequestHandler):
    server: _Switchable

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.server.mode == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with self.server.lock:
            self.server.received.append({"method": self.command, "path": self.path,
                                         "version": self.headers.get("X-Version"),
                                         "body": json.loads(body) if body else None})
        answer = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _switchable() -> Iterator[_Switchable]:
    server = _Switchable()
    thread = threading.Thread(target=server.serve_forever, name="switchable", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _caller(url: str, version: int) -> str:
    return f"""
admin_token: t0ken
tasks:
  - name: Caller
    subscriptions: user/call/now
    code: |
      {{% action "http" %}}
        {{"method": "post", "url": "{url}/v{version}", "headers": {{"X-Version": "{version}"}},
         "body": {{"version": {version}, "n": {{{{ event.data | json }}}}}}}}
      {{% endaction %}}
"""


def test_a_retried_action_run_keeps_its_original_options(make_daemon) -> None:
    with _switchable() as server:
        d: Daemon = make_daemon(_caller(server.url, 1)).start()
        for n in ("1", "2"):
            assert d.cli("send", "user/call/now", "--data", n).returncode == 0
        d.wait_runs("action_type = 'http' AND state = 'failed'", 2, timeout=8)
        failed = {json.loads(r["options"])["body"]["n"]: r for r in _rows(
            d, "SELECT id, options, error, attempts FROM runs WHERE action_type = 'http'")}
        assert set(failed) == {1, 2}
        assert all("too many redirects" in r["error"] for r in failed.values()), failed
        # The task changes (new URL, header and body) and the daemon reloads it...
        d.write_config(_caller(server.url, 2))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in d.logs(), timeout=8,
                   message="the reload")
        server.mode = "ok"
        # ...as a new event shows: its run uses the new code.
        assert d.cli("send", "user/call/now", "--data", "3").returncode == 0
        wait_until(lambda: server.paths() == ["/v2"], timeout=8, message="the new code's request")
        # Both failed runs retried by hand, one per way: they send their original request.
        retried = d.cli("runs", "retry", str(failed[1]["id"]))
        assert retried.returncode == 0, retried.stderr
        status, _, body = d.request("POST", f"/api/runs/{failed[2]['id']}/retry", headers=AUTH)
        assert status == 200, body
        assert json.loads(body)["id"] == failed[2]["id"]
        d.wait_runs("action_type = 'http' AND state = 'succeeded'", 3, timeout=8)
        with server.lock:
            received = sorted(server.received, key=lambda r: r["body"]["n"])
        assert received == [
            {"method": "POST", "path": "/v1", "version": "1", "body": {"version": 1, "n": 1}},
            {"method": "POST", "path": "/v1", "version": "1", "body": {"version": 1, "n": 2}},
            {"method": "POST", "path": "/v2", "version": "2", "body": {"version": 2, "n": 3}}]
        # The same runs, performed again (no new action run), their options untouched.
        after = {r["id"]: r for r in _rows(
            d, "SELECT id, state, options, attempts FROM runs WHERE action_type = 'http'")}
        assert len(after) == 3
        for original in failed.values():
            now = after[original["id"]]
            assert (now["state"], now["attempts"]) == ("succeeded", original["attempts"] + 1)
            assert json.loads(now["options"]) == json.loads(original["options"])
        assert d.stop() == 0
