"""Webhooks under load (SPEC §12): no request fails while the worker renders, and only a backlog
deeper than `listen.max_due_runs` is refused (503 with Retry-After, nothing stored). That the
listener comes first is tested in process: tests/test_pipeline.py.

Real daemons, real HTTP on keep-alive connections from threads; every load loop is bounded.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable

import pytest

from tests.conftest import Daemon, wait_until

pytestmark = pytest.mark.timeout(120)

#: A task that renders for a while (a loop over the event's data) and records one cache action.
SLOW_TASK = """
  - name: slow
    subscriptions: |
      user/load/burst
    code: |
      {% assign total = 0 %}
      {% for i in (1..3000) %}{% assign total = total | plus: i %}{% endfor %}
      {% action "cache", "set", "load:last", total %}
"""


def make(make_daemon: Callable[..., Daemon], listen: str = "") -> Daemon:
    """A daemon with the `burst` webhook, whose task renders `SLOW_TASK`; `listen`: more keys."""
    d = make_daemon("")
    d.config.write_text(f"database: {d.db_path}\n"
                        f"listen: {{host: 127.0.0.1, port: {d.port}{listen}}}\n"
                        "webhooks:\n  - {name: burst, topic: user/load/burst}\n"
                        f"tasks:{SLOW_TASK}")
    return d.start()


def burst(d: Daemon, conns: int, per_conn: int, stop: threading.Event | None = None,
          ) -> list[tuple[int, dict[str, str], bytes]]:
    """`conns` keep-alive connections posting `per_conn` webhooks each (fewer once `stop` is
    set); every answer (status, headers, body)."""
    answers: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=20)
        try:
            for n in range(per_conn):
                if stop is not None and stop.is_set():
                    return
                conn.request("POST", "/webhooks/burst", json.dumps({"n": n}),
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                answer = (resp.status, dict(resp.getheaders()), resp.read())
                with lock:
                    answers.append(answer)
                if answer[0] == 503 and stop is not None:
                    stop.set()
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "a client did not finish"
    return answers


def count(d: Daemon, sql: str) -> int:
    return int(d.query(sql)[0][0])


def finished_task_runs(d: Daemon) -> int:
    return count(d, "SELECT COUNT(*) FROM runs WHERE kind = 'task' AND state = 'succeeded'")


def test_no_request_fails_while_rendering(make_daemon: Callable[..., Daemon]) -> None:
    """A burst on a webhook whose task renders for a while: every request is answered 204 (the
    default max_due_runs is far away), and every task run is rendered after, with its action."""
    d = make(make_daemon)
    answers = burst(d, conns=16, per_conn=25)
    statuses = [a[0] for a in answers]
    assert statuses == [204] * 400, sorted(set(statuses))
    assert count(d, "SELECT COUNT(*) FROM events WHERE topic = 'user/load/burst'") == 400
    wait_until(lambda: finished_task_runs(d) == 400, timeout=90, message="all rendered")
    assert count(d, "SELECT COUNT(*) FROM runs WHERE kind = 'action' "
                    "AND state = 'succeeded'") == 400


def test_a_deep_backlog_gets_503_with_retry_after(make_daemon: Callable[..., Daemon]) -> None:
    d = make(make_daemon, ", max_due_runs: 20")
    stop = threading.Event()
    answers = burst(d, conns=16, per_conn=150, stop=stop)
    refused = [a for a in answers if a[0] == 503]
    accepted = [a for a in answers if a[0] == 204]
    assert refused, "no 503 although the backlog passed listen.max_due_runs"
    assert {a[0] for a in answers} == {204, 503}
    status, headers, body = refused[0]
    assert headers["Retry-After"] == "1"
    assert "listen.max_due_runs" in json.loads(body)["error"]
    # Nothing is stored for a refused request; everything accepted is.
    assert count(d, "SELECT COUNT(*) FROM events WHERE topic = 'user/load/burst'") == len(accepted)
    # Refused only once the backlog was really deep: the accepted ones outnumber the limit.
    assert len(accepted) > 20
    # Once the backlog is rendered, webhooks are taken again (the count is refreshed).
    wait_until(lambda: finished_task_runs(d) == len(accepted), timeout=90,
               message="backlog rendered")

    def taken() -> bool:
        status, _, _ = d.post_json("/webhooks/burst", {"n": -1})
        return status == 204
    wait_until(taken, timeout=10, interval=0.2, message="a webhook taken again")
