"""Crash and restart under load: SIGKILL at random moments loses nothing that got a 204, and
SIGTERM leaves no run `started`, even with slow HTTP actions in flight; events waiting after a
crash are routed while slow emails hold every slot."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import random
import signal
import threading
import time
from typing import Any

from runnerd.queue import operator, runs
from runnerd.store import backends

from .. import helpers_servers
from ..conftest import Daemon
from .helpers import Loader, Target, orders_config, wait_for

COUNTER = orders_config('{% action "cache", "incr", "orders" %}',
                        '{% action "echo", i: event.data.i %}', extra="shutdown_grace: 2s\n")


def _audit(d: Daemon, accepted: list[str]) -> dict[str, int]:
    """Per acknowledged event: stored once, one event run, one task run, both actions done."""
    rows = d.query("""
        SELECT e.webhook_request_id AS rid,
               COUNT(CASE WHEN r.kind = 'event' THEN 1 END) AS event_runs,
               COUNT(CASE WHEN r.kind = 'event' AND r.state = 'succeeded' THEN 1 END)
                   AS event_ok,
               COUNT(CASE WHEN r.kind = 'task' THEN 1 END) AS task_runs,
               COUNT(CASE WHEN r.kind = 'action' AND r.state = 'succeeded' THEN 1 END)
                   AS actions_ok
        FROM events e LEFT JOIN runs r ON r.event_id = e.id
        WHERE e.webhook_request_id IS NOT NULL GROUP BY e.id""")
    by_rid: dict[str, list[dict[str, int]]] = {}
    for r in rows:
        by_rid.setdefault(r["rid"], []).append(dict(r))
    lost = [rid for rid in accepted if rid not in by_rid]
    duplicated = [rid for rid, found in by_rid.items() if len(found) > 1]
    wrong = [rid for rid in accepted if rid in by_rid and by_rid[rid][0] != {
        "rid": rid, "event_runs": 1, "event_ok": 1, "task_runs": 1, "actions_ok": 2}]
    return {"accepted": len(accepted), "stored": len(by_rid), "lost": len(lost),
            "duplicated": len(duplicated), "not_processed_once": len(wrong)}


def test_sigkill_at_random_moments_loses_no_acknowledged_event(make_daemon) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    d: Daemon = make_daemon(COUNTER).start()
    loader = Loader(d.port, body_size=200).start()
    kills = 0
    try:
        for _ in range(3):
            target = len(loader.accepted) + rng.randint(30, 300)
            wait_for(lambda t=target: len(loader.accepted) >= t, timeout=20,
                     message=f"{target} webhooks accepted")
            d.kill()  # SIGKILL: no shutdown at all
            kills += 1
            d.start()
        wait_for(lambda: len(loader.accepted) >= target + 20, timeout=20, message="load resumed")
    finally:
        loader.stop()
    accepted = list(loader.accepted)
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 2 * len(accepted), timeout=60)
    wait_for(lambda: d.query("SELECT COUNT(*) FROM runs WHERE state NOT IN "
                             "('succeeded', 'failed')")[0][0] == 0, timeout=60,
             message="queue drained")
    counts = _audit(d, accepted)
    counter = int(d.cli("cache", "get", "orders").stdout)
    report = (f"seed={seed} kills={kills} sent={loader.sent} statuses={loader.statuses} "
              f"{counts} cache_incr={counter}")
    print(report)
    assert counts["lost"] == 0 and counts["duplicated"] == 0, report
    assert counts["not_processed_once"] == 0, report
    assert counter >= len(accepted), report  # actions are at-least-once
    assert d.stop() == 0
    assert d.query("SELECT COUNT(*) FROM runs WHERE state = 'started'")[0][0] == 0


SLOW = """
concurrency: 4
shutdown_grace: 1s
webhooks:
  - {name: orders, topic: user/orders/ready}
tasks:
  - name: Slow
    subscriptions: user/slow/call
    code: |
      {% action "http", method: "get", url: "URL/slow?s=3" %}
  - name: Counter
    subscriptions: user/orders/ready
    code: |
      {% action "echo", i: event.data.i %}
"""


def test_sigterm_with_slow_http_in_flight_requeues_and_completes_after_restart(
        make_daemon) -> None:
    with Target() as target:
        d: Daemon = make_daemon(SLOW.replace("URL", target.url)).start()
        for _ in range(4):
            assert d.cli("send", "user/slow/call").returncode == 0
        wait_for(lambda: target.in_flight >= 1, message="a slow request in flight")
        loader = Loader(d.port).start()
        try:
            wait_for(lambda: len(loader.accepted) >= 20, message="webhook load")
            began = time.monotonic()
            code = d.stop(signal.SIGTERM, timeout=30)
            took = time.monotonic() - began
        finally:
            loader.stop()
        report = (f"exit={code} took={took:.2f}s accepted={len(loader.accepted)} "
                  f"statuses={loader.statuses}")
        print(report)
        assert code == 0, d.logs()
        assert took < 1 + 5, report  # grace 1 s plus the listener's drain, well within 10 s
        assert d.query("SELECT COUNT(*) FROM runs WHERE state = 'started'")[0][0] == 0
        requeued = d.query("SELECT COUNT(*) FROM runs WHERE action_type = 'http' AND "
                           "state = 'due'")[0][0]
        states = [tuple(r) for r in d.query("SELECT id, state, attempts FROM runs "
                                            "WHERE action_type = 'http'")]
        assert requeued >= 1, f"a slow http run in flight was put back to due: {states}"
        # Each interrupted attempt is kept, as a retried failure's is.
        kept = d.query("SELECT a.attempt, a.error FROM run_attempts a JOIN runs r "
                       "ON r.id = a.run_id WHERE r.action_type = 'http' AND r.state = 'due'")
        assert [tuple(r) for r in kept] == [(1, runs.INTERRUPTED)] * requeued
        stored = {r[0] for r in d.query("SELECT webhook_request_id FROM events")}
        assert set(loader.accepted) <= stored, "every acknowledged webhook is stored"
        d.start()
        d.wait_runs("action_type = 'http' AND state = 'succeeded'", 4, timeout=30)
        d.wait_runs("action_type = 'echo' AND state = 'succeeded'", len(loader.accepted))
        results = [json.loads(r[0]) for r in d.query(
            "SELECT result FROM runs WHERE action_type = 'http'")]
        assert all(r["status"] == 200 for r in results)
        assert d.stop() == 0
        assert d.query("SELECT COUNT(*) FROM runs WHERE state = 'started'")[0][0] == 0


def test_sigterm_grace_starts_at_the_signal_even_while_a_request_holds_the_listener(
        make_daemon) -> None:
    import socket

    with Target() as target:
        # One slow request (30 s) in flight: far longer than the grace.
        d: Daemon = make_daemon(SLOW.replace("URL", target.url).replace("s=3", "s=30")).start()
        assert d.cli("send", "user/slow/call").returncode == 0
        wait_for(lambda: target.in_flight >= 1, message="the slow request in flight")
        # A webhook whose body never finishes arriving: the listener waits for it (up to its
        # shutdown timeout, 5 s) after SIGTERM. The worker must not wait with it.
        held = socket.create_connection(("127.0.0.1", d.port))
        try:
            held.sendall(b"POST /webhooks/orders HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.2)  # let the server start reading the request
            assert d.proc is not None
            d.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_for(lambda: d.query("SELECT state FROM runs WHERE action_type = 'http'")[0][0]
                     == "due", timeout=4, message="the slow run requeued after the 1 s grace")
            took = time.monotonic() - signalled
            assert took < 3, f"requeued {took:.1f}s after SIGTERM (grace 1 s)"
        finally:
            held.close()
        assert d.proc.wait(timeout=15) == 0, d.logs()


class GatedSmtp(helpers_servers.Recorder):
    """An SMTP server whose DATA replies wait until the test opens the gate: every email sent
    before then stays in flight (the slow mail server of a bad day)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.held = 0  #: DATA commands waiting at the gate (one at a time per connection)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.held += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


MAILER = orders_config('{% action "email", to: "ops@example.com", subject: event.source, '
                       'body: "order" %}', concurrency=2,
                       extra="email: {transport: smtp, from: bot@example.com, "
                             "smtp: {host: 127.0.0.1, port: PORT, timeout: 60s}}\n")


def test_after_a_crash_stored_events_are_routed_while_slow_emails_hold_every_slot(
        make_daemon) -> None:
    """Routing an event is CPU work: events waiting after a crash (here stored by the command
    line's code while the daemon was down) get their task runs rendered, and their email runs
    queued, while every slot holds an email the mail server has not answered. Before, each event
    run waited for a slot behind every due email: the renders went at the mail server's pace."""
    handler = GatedSmtp()
    controller = helpers_servers.LoopbackController(handler)
    controller.start()
    try:
        d: Daemon = make_daemon(MAILER.replace("PORT", str(controller.port))).start()
        for i in range(4):
            assert d.post_json("/webhooks/orders", {"i": i})[0] == 204
        wait_for(lambda: handler.held == 1, message="an email held at the gate")
        d.kill()  # the slots' emails stay `started` in the file

        async def store(n: int) -> None:  # what `runnerd send` does, n times
            database = await backends.open_database(d.db_path, d.pg_url).open()
            try:
                for i in range(n):
                    await operator.send(database, "user/orders/ready", {"i": i}, source="cli",
                                   now=time.time())
            finally:
                await database.close()

        asyncio.run(store(300))
        d.start()
        d.wait_runs("kind = 'task' AND state = 'succeeded'", 4 + 300, timeout=20)
        d.wait_runs("action_type = 'email' AND state IN ('due', 'started')", 4 + 300)
        # All rendered and queued while the mail server answered nothing at all.
        assert not handler.gate.is_set() and handler.messages == []
        cli = d.query("SELECT r.state, r.attempts, r.started_at = r.finished_at AS at_once "
                      "FROM runs r JOIN events e ON e.id = r.event_id "
                      "WHERE r.kind = 'event' AND e.source = 'cli'")
        assert [tuple(r) for r in cli] == [("succeeded", 1, 1)] * 300
        # No event run took a slot: only the two emails are started (concurrency 2).
        started = d.query("SELECT kind, COUNT(*) AS n FROM runs WHERE state = 'started' "
                          "GROUP BY kind")
        assert [tuple(r) for r in started] == [("action", 2)]
        handler.gate.set()
        d.wait_runs("action_type = 'email' AND state = 'succeeded'", 4 + 300, timeout=20)
        subjects = [email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]
                    for m in handler.messages]
        # Among the runs that take a slot, the queue's order held: the older emails went first.
        assert subjects == ["webhook"] * 4 + ["cli"] * 300
        assert d.stop() == 0
    finally:
        controller.stop()
