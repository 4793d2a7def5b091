"""Honest task health (issue 19, item 1): a task's status counts its task run *and* its action
runs. Against a real daemon and a real HTTP target: a redirect loop (a permanent failure) and a
500 with `error_on_5xx` (retried, then failed for good); an action still retrying counts neither
way; a task whose actions all succeeded is up."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from . import helpers_servers
from .conftest import Daemon, scrape, value, wait_until

pytestmark = pytest.mark.timeout(90)


class Target(BaseHTTPRequestHandler):
    """/loop redirects to itself; /broken answers 500 (200 once `mended`); /ok answers 200."""

    mended = False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
        else:
            self.send_response(500 if self.path == "/broken" and not self.mended else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[int]:
    Target.mended = False
    with helpers_servers.http_server(Target) as port:
        yield port


def config(port: int) -> str:
    base = f"http://127.0.0.1:{port}"

    def task(name: str, path: str, extra: str = "") -> str:
        return f"""
          - name: {name}
            subscriptions: |
              mechanic/user/trigger
            code: |
              {{% action "http", method: "GET", url: "{base}{path}"{extra} %}}
              {{% action "echo", ok: true %}}
        """
    return (f"""
        http: {{allow: ["127.0.0.1:{port}"]}}
        monitors:
          - {{task: Looping, period: 1h, grace: 1h}}
          - {{task: Erroring, period: 1h, grace: 1h}}
          - {{task: Fine, period: 1h, grace: 1h}}
        tasks:""" + task("Looping", "/loop") + task("Erroring", "/broken", ", error_on_5xx: true")
            + task("Fine", "/ok"))


def hurry_retries(d: Daemon) -> int:
    """Make the retries waiting for their backoff due now (the daemon polls for them)."""
    return d.execute("UPDATE runs SET run_at = 0 WHERE state = 'scheduled'")


def status(d: Daemon, name: str) -> sqlite3.Row:
    return d.query("SELECT * FROM task_status WHERE name = ?", (name,))[0]


def test_a_task_whose_actions_fail_is_failing(make_daemon: Any, target: int) -> None:
    d: Daemon = make_daemon(config(target)).start()
    d.cli("send", "mechanic/user/trigger", check=True)
    # The redirect loop fails for good at once; the 500 is retried.
    d.wait_runs("kind = 'action' AND action_type = 'http' AND state = 'failed'", 1)
    d.wait_runs("kind = 'action' AND action_type = 'http' AND state = 'scheduled'", 1)
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 4)  # the echoes and Fine's http
    looping = status(d, "Looping")
    assert (looping["last_status"], looping["state"], looping["last_success_at"]) == \
        ("failed", "down", None)
    assert "action http" in looping["last_error"] and "redirect" in looping["last_error"]
    # Retrying counts neither way: Erroring's task run succeeded, its http action is waiting.
    erroring = status(d, "Erroring")
    assert (erroring["last_status"], erroring["state"]) == (None, "new")
    fine = status(d, "Fine")
    assert (fine["last_status"], fine["state"]) == ("succeeded", "up")
    # The 500 fails for good after its retries: Erroring is failing too.
    while not d.query("SELECT 1 FROM runs WHERE action_type = 'http' AND state = 'failed' "
                      "AND options LIKE '%broken%'"):
        hurry_retries(d)
        wait_until(lambda: d.query("SELECT 1 FROM runs WHERE action_type = 'http' AND options "
                                   "LIKE '%broken%' AND state IN ('scheduled', 'failed')"))
    wait_until(lambda: status(d, "Erroring")["last_status"] == "failed")
    erroring = status(d, "Erroring")
    assert erroring["state"] == "down" and "500" in erroring["last_error"]
    # Everywhere that status is used: `monitor tasks`, `monitors`, /status, the metrics.
    out = d.cli("monitor", "tasks", "--task", "Looping", "60", "--task", "Erroring", "60",
                "--task", "Fine", "60", "--no-mail", "--json")
    assert out.returncode == 1
    assert [(r["name"], r["status"]) for r in json.loads(out.stdout)] == [
        ("Looping", "failing"), ("Erroring", "failing"), ("Fine", "ok")]
    listing = {m["name"]: m["state"] for m in json.loads(d.cli("monitors", "--json").stdout)}
    assert listing == {"Looping": "down", "Erroring": "down", "Fine": "up"}
    families = scrape(d)
    assert value(families, "runnerd_monitor_up", "runnerd_monitor_up", monitor="Looping") == 0
    assert value(families, "runnerd_monitor_up", "runnerd_monitor_up", monitor="Fine") == 1
    success = "runnerd_task_last_success_timestamp_seconds"
    assert value(families, success, success, task="Fine") == fine["last_success_at"]
    with pytest.raises(KeyError):
        value(families, success, success, task="Looping")  # never succeeded
    pinged = "runnerd_monitor_last_ping_timestamp_seconds"
    assert value(families, pinged, pinged, monitor="Erroring") == erroring["last_run_at"]
    page = d.request("GET", "/status")[2].decode()
    assert "<title>runnerd: 2 monitors down, 2 tasks failing</title>" in page
    assert d.stop() == 0


def test_cancelling_a_retrying_action_fails_its_task_and_a_retry_mends_it(make_daemon: Any, target: int) -> None:
    d: Daemon = make_daemon(config(target)).start()
    d.cli("send", "mechanic/user/trigger", check=True)
    d.wait_runs("kind = 'action' AND action_type = 'http' AND state = 'scheduled'", 1)
    (retrying,) = d.query("SELECT id FROM runs WHERE state = 'scheduled'")
    assert status(d, "Erroring")["last_status"] is None  # retrying: neither way
    out = d.cli("runs", "cancel", str(retrying["id"]), "--json", check=True)
    assert json.loads(out.stdout)["state"] == "failed"
    erroring = status(d, "Erroring")
    assert (erroring["last_status"], erroring["state"]) == ("failed", "down")
    assert erroring["last_error"] == f"action http (run {retrying['id']}) failed: cancelled"
    # Retried by hand once the target is mended: the task's work succeeded after all.
    Target.mended = True
    d.cli("runs", "retry", str(retrying["id"]), check=True)
    wait_until(lambda: status(d, "Erroring")["last_status"] == "succeeded")
    assert status(d, "Erroring")["state"] == "up"
    assert d.stop() == 0
