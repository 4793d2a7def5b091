"""Pings cannot mail-bomb the operators (issue 15, finding 1).

- Alert damping: a monitor alerts (email and `runnerd/monitors/*` event) at most once per
  `monitoring.alert_interval`; the changes in between are kept as `damped` flips and counted, and
  once the interval has passed one summary says "flapped N times since" the previous alert.
- Each monitor keeps its latest `taskstatus.FLIPS_KEPT` flips.
- Pings are rate-limited per monitor and per client address: 429 with Retry-After, nothing
  recorded.
- A monitor with a `ping_key` takes only pings that carry it (`?key=` or X-Runnerd-Ping-Key):
  401 otherwise, nothing recorded; the key is never shown.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.client
import json
import signal
import sqlite3
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runnerd import actions, config, daemon, models
from runnerd.monitoring import monitors, ratelimit, sd_notify
from runnerd.queue import taskstatus
from runnerd.store import db, sql

from .conftest import Clock, Daemon, ping, wait_until
from .helpers_servers import smtp_server

T0 = 1_750_000_000.0


def subjects(recorder: Any) -> list[str]:
    """The decoded subjects of the messages the SMTP server accepted."""
    return [str(email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]).strip()
            for m in recorder.messages]


def damping_settings(tmp_path: Path, smtp_port: int) -> config.Settings:
    path = tmp_path / "damping.yaml"
    path.write_text(textwrap.dedent(f"""\
        database: test.db
        email: {{transport: smtp, from: rd@example.com,
                 smtp: {{host: 127.0.0.1, port: {smtp_port}}}}}
        monitoring: {{mail_recipients: [ops@example.com], alert_interval: 10m}}
        monitors:
          - {{name: backup, period: 1d, grace: 1h}}
        """))
    return config.load(str(path), {})


async def flips(database: db.Database) -> dict[str, int]:
    rows = await database.read(lambda tx: tx.conn.execute(
        "SELECT mail_state, COUNT(*) FROM monitor_flips GROUP BY 1").fetchall())
    return {r[0]: r[1] for r in rows}


async def flaps(database: db.Database) -> int:
    row = await database.read(lambda tx: tx.one("status_get", {"name": "backup"}))
    return int(row["flaps"])


async def test_flapping_alerts_at_once_then_once_per_interval_with_a_summary(
        database: db.Database, tmp_path: Path) -> None:
    with smtp_server() as (controller, recorder):
        s = damping_settings(tmp_path, controller.port)
        mon = monitors.Monitors(database, lambda: s)
        assert await mon.tick(T0) == []
        # The first change alerts at once: no added delay for a monitor that flips once.
        (down,) = await ping(database, "backup", "failed", b"disk full", T0 + 1)
        assert down.topic == taskstatus.DOWN_TOPIC and down.data["flaps"] == 0
        assert await mon.deliver(T0 + 1) == 1
        assert subjects(recorder) == ["runnerd: monitor backup is DOWN"]
        # Its recovery within the interval alerts at once too: a down and an up are no flapping.
        (up,) = await ping(database, "backup", "succeeded", b"", T0 + 2)
        assert up.topic == taskstatus.UP_TOPIC and up.data["flaps"] == 0
        assert await mon.deliver(T0 + 2) == 1
        # 198 more alternating reports within the interval after that alert: recorded and
        # counted, no event, no email; the flip history stays at FLIPS_KEPT rows.
        for i in range(2, 200):
            status = "succeeded" if i % 2 else "failed"
            assert await ping(database, "backup", status, b"", T0 + 1 + i) == []
            assert await mon.tick(T0 + 1 + i) == []
        assert await mon.deliver(T0 + 200) == 0 and len(recorder.messages) == 2
        assert await flips(database) == {"damped": taskstatus.FLIPS_KEPT}
        assert await flaps(database) == 198
        events = await database.read(lambda tx: tx.conn.execute(
            "SELECT COUNT(*) FROM events WHERE topic LIKE 'runnerd/monitors/%'").fetchone()[0])
        assert events == 2
        # Once the interval has passed, one summary: the state now and how often it flapped.
        assert await mon.tick(T0 + 2 + 599) == []
        (summary,) = await mon.tick(T0 + 2 + 600)
        assert summary.topic == taskstatus.UP_TOPIC
        assert (summary.data["state"], summary.data["previous_state"], summary.data["flaps"],
                summary.data["flapping_since"]) == ("up", "up", 198, models.iso(T0 + 2))
        assert await mon.tick(T0 + 2 + 601) == []  # once
        assert await mon.deliver(T0 + 2 + 600) == 1
        assert subjects(recorder)[2] == (f"runnerd: monitor backup is UP (flapped 198 times "
                                         f"since {models.iso(T0 + 2)})")
        assert b"flapped 198 times since the previous" in recorder.messages[2].data
        assert await flaps(database) == 0
        # Quiet for longer than the interval: nothing more; then a change alerts at once again.
        assert await mon.tick(T0 + 5000) == []
        (again,) = await ping(database, "backup", "failed", b"", T0 + 5000)
        assert again.data["flaps"] == 0 and again.data["previous_state"] == "up"
        (recovered,) = await ping(database, "backup", "succeeded", b"", T0 + 5001)
        assert recovered.topic == taskstatus.UP_TOPIC and recovered.data["flaps"] == 0
        # A new down within the interval after that alert is damped; damped changes survive a
        # restart: the new process sends their summary when it is due.
        assert await ping(database, "backup", "failed", b"", T0 + 5002) == []
        restarted = monitors.Monitors(database, lambda: s)
        assert await restarted.tick(T0 + 5600) == []
        (late,) = await restarted.tick(T0 + 5601)
        assert (late.data["flaps"], late.data["state"]) == (1, "down")
        # Pausing drops the summary owed: a paused monitor alerts about nothing.
        (up_again,) = await ping(database, "backup", "succeeded", b"", T0 + 5602)
        assert await ping(database, "backup", "failed", b"", T0 + 5603) == []
        assert await flaps(database) == 1
        await database.write(lambda tx: taskstatus.pause(tx, "backup", T0 + 5604))
        assert await restarted.tick(T0 + 9000) == [] and await flaps(database) == 0
        for m in (mon, restarted):
            if m._executor is not None:
                await m._executor.close()


# --- the finding's reproduction through the real daemon ------------------------------------

def bomb_config(smtp_port: int, interval: str) -> str:
    return f"""
        email: {{transport: smtp, from: runnerd@example.com,
                 smtp: {{host: 127.0.0.1, port: {smtp_port}}}}}
        monitoring: {{mail_recipients: [ops@example.com], alert_interval: {interval},
                      ping_rate: 0, ping_rate_per_client: 0}}
        monitors:
          - {{name: x, period: 1h, grace: 1h}}
        tasks:
          - name: On monitors
            subscriptions: |
              runnerd/monitors/down
              runnerd/monitors/up
            code: |
              {{% action "echo", state: event.data.state, flaps: event.data.flaps %}}
        """


def test_a_ping_bomb_gives_a_down_and_an_up_alert_then_one_summary(make_daemon: Any) -> None:
    with smtp_server() as (controller, recorder):
        d: Daemon = make_daemon(bomb_config(controller.port, "1h")).start()
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        answers = []
        for i in range(200):
            conn.request("GET", "/ping/x/fail" if i % 2 == 0 else "/ping/x")
            response = conn.getresponse()
            response.read()
            answers.append(response.status)
        conn.close()
        assert answers == [200] * 200

        def settled() -> bool:
            return d.query("SELECT COUNT(*) FROM monitor_flips WHERE mail_state = 'pending'"
                           )[0][0] == 0 and len(recorder.messages) >= 2

        wait_until(settled, timeout=15)
        assert subjects(recorder) == ["runnerd: monitor x is DOWN", "runnerd: monitor x is UP again"]
        assert d.query("SELECT COUNT(*) FROM events WHERE topic LIKE 'runnerd/monitors/%'"
                       )[0][0] == 2
        assert d.query("SELECT COUNT(*) FROM monitor_flips")[0][0] == taskstatus.FLIPS_KEPT
        assert d.query("SELECT flaps FROM task_status WHERE name = 'x'")[0][0] == 198
        # A reload shortens the interval, which has now passed: one summary, mail and event.
        d.write_config(bomb_config(controller.port, "1s"))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(recorder.messages) == 3, timeout=15)
        assert subjects(recorder)[2].startswith("runnerd: monitor x is UP (flapped 198 times")
        d.wait_runs("kind = 'action' AND state = 'succeeded'", 3)
        echoed = [json.loads(r[0]) for r in d.query(
            "SELECT result FROM runs WHERE kind = 'action' ORDER BY id")]
        assert echoed == [{"state": "down", "flaps": 0}, {"state": "up", "flaps": 0},
                          {"state": "up", "flaps": 198}]
        wait_until(settled, timeout=15)
        assert len(recorder.messages) == 3
        assert d.query("SELECT COUNT(*) FROM events WHERE topic LIKE 'runnerd/monitors/%'"
                       )[0][0] == 3
        assert d.stop() == 0


# --- rate limits: real HTTP from two client addresses, an injected clock --------------------

@contextlib.asynccontextmanager
async def ping_listener(tmp_path: Path, body: str, clock: Clock
                        ) -> AsyncIterator[tuple[db.Database, dict[str, str]]]:
    """The daemon's app on a real database, listening on 127.0.0.1 and ::1 (two client
    addresses on loopback); yields the database and the base URL per address."""
    path = tmp_path / "pings.yaml"
    path.write_text(f"database: {tmp_path / 'pings.db'}\n" + textwrap.dedent(body))
    registry = daemon.load(str(path), {})
    database = await db.Database(registry.settings.database).open()
    await database.migrate()
    parts = daemon.build(registry, database, actions.Registry(), None, clock=clock,
                         notifier=sd_notify.Notifier(None), environ={})
    runner = web.AppRunner(parts.app, access_log=None)
    await runner.setup()
    try:
        for host in ("127.0.0.1", "::1"):
            await web.TCPSite(runner, host, 0).start()
        ports = {address[0]: address[1] for address in runner.addresses}
        yield database, {"127.0.0.1": f"http://127.0.0.1:{ports['127.0.0.1']}",
                         "::1": f"http://[::1]:{ports['::1']}"}
    finally:
        await runner.cleanup()
        await database.close()


RATES = """
    monitoring: {ping_rate: 3, ping_rate_per_client: 5}
    monitors:
      - {name: a, period: 1h, grace: 1h}
      - {name: b, period: 1h, grace: 1h}
    """


async def test_pings_over_the_rate_get_429_and_record_nothing(tmp_path: Path,
                                                              clock: Clock) -> None:
    async with ping_listener(tmp_path, RATES, clock) as (database, urls), \
            aiohttp.ClientSession() as session:
        async def ping(host: str, name: str) -> tuple[int, str, str | None]:
            clock.advance(0.001)  # each recorded ping has its own time
            async with session.get(f"{urls[host]}/ping/{name}") as response:
                return response.status, await response.text(), response.headers.get("Retry-After")

        async def last_run(name: str) -> float | None:
            row = await database.read(lambda tx: tx.one("status_get", {"name": name}))
            return None if row is None else row["last_run_at"]

        v4, v6 = "127.0.0.1", "::1"
        assert [(await ping(v4, "a"))[0] for _ in range(3)] == [200, 200, 200]
        accepted = await last_run("a")
        # The monitor's bucket (3 a minute) is empty: 429, one line, told when to come back.
        assert await ping(v4, "a") == (429, "too many pings for monitor 'a': retry later\n", "20")
        assert await last_run("a") == accepted
        # The client's bucket (5 a minute, all monitors together) runs out on another monitor.
        assert [(await ping(v4, "b"))[0] for _ in range(1)] == [200]
        status, text, retry = await ping(v4, "b")
        assert (status, text) == (429, "too many pings from 127.0.0.1: retry later\n")
        assert retry is not None and int(retry) >= 1
        assert (await ping(v4, "b"))[0] == 429
        # Another address has its own bucket; the monitor's is shared by every address.
        assert (await ping(v6, "b"))[0] == 200
        assert (await ping(v6, "a"))[:2] == (429, "too many pings for monitor 'a': retry later\n")
        assert await last_run("a") == accepted
        # A minute later the buckets are full again.
        clock.advance(60)
        assert [(await ping(v4, "a"))[0] for _ in range(3)] == [200, 200, 200]
        assert await last_run("a") == clock.now


async def test_a_rate_of_0_is_no_limit(tmp_path: Path, clock: Clock) -> None:
    body = RATES.replace("ping_rate: 3, ping_rate_per_client: 5",
                         "ping_rate: 0, ping_rate_per_client: 0")
    async with ping_listener(tmp_path, body, clock) as (_, urls), \
            aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.get(f"{urls['127.0.0.1']}/ping/a") as response:
                assert response.status == 200


def test_the_buckets_of_many_addresses_stay_bounded() -> None:
    buckets = ratelimit.Buckets(max_keys=100)
    for i in range(1000):  # a client spraying addresses: each one is a new bucket
        assert buckets.take(f"2001:db8::{i:x}", 1, T0 + i * 0.001) == 0.0
    assert len(buckets) <= 100
    assert buckets.take("2001:db8::3e7", 1, T0 + 1) == pytest.approx(60 - 0.001, abs=1e-6)
    # A minute later those buckets are full again: the next overflow forgets them all...
    buckets.take("2001:db8:1::", 1, T0 + 61)
    buckets.take("2001:db8:1::1", 1, T0 + 61)
    assert len(buckets) <= 2
    # ...and when more than max_keys are in use at once, the least recently used half goes.
    for i in range(2, 101):
        buckets.take(f"2001:db8:1::{i:x}", 1, T0 + 61)
    assert len(buckets) == 51 and buckets.take("2001:db8:1::64", 1, T0 + 61) > 0


# --- ping keys -------------------------------------------------------------------------------

KEY = "PING-KEY-3c9d0e7a"


def test_a_ping_key_is_required_checked_and_never_shown(make_daemon: Any) -> None:
    d: Daemon = make_daemon("""
        monitors:
          - {name: guarded, period: 1h, grace: 1h, ping_key: "${PING_KEY}"}
          - {name: open, period: 1h, grace: 1h}
        """, env={"PING_KEY": KEY}).start()

    def recorded() -> tuple[Any, ...]:
        return tuple(d.query("SELECT last_run_at, last_status FROM task_status "
                             "WHERE name = 'guarded'")[0])

    refused = [d.request("GET", "/ping/guarded"),
               d.request("GET", "/ping/guarded?key=WRONG-KEY"),
               d.request("POST", "/ping/guarded/fail", "x", {"X-Runnerd-Ping-Key": "WRONG-KEY"}),
               d.request("GET", f"/ping/guarded?key={KEY}x")]
    for status, _, body in refused:
        assert (status, body) == (401, b"missing or wrong ping key for monitor 'guarded' "
                                       b"(?key= or X-Runnerd-Ping-Key)\n")
    assert recorded() == (None, None)
    assert d.request("GET", f"/ping/guarded?key={KEY}")[:3:2] == (200, b"OK\n")
    assert recorded()[1] == "succeeded"
    assert d.request("POST", "/ping/guarded/fail", "boom", {"X-Runnerd-Ping-Key": KEY})[0] == 200
    assert recorded()[1] == "failed"
    assert d.request("GET", "/ping/open")[0] == 200  # a monitor without a key: anyone
    shown = [d.logs(), d.request("GET", "/status")[2].decode(),
             d.cli("monitors", "--json").stdout, d.cli("check").stdout,
             json.dumps([dict(r) for r in d.query("SELECT * FROM task_status")])]
    assert all(KEY not in text for text in shown)
    assert d.stop() == 0


# --- the schema change ----------------------------------------------------------------------

def test_the_flap_damping_migration_keeps_the_flips_and_their_ids(tmp_path: Path) -> None:
    ours = next(n for n, name, _ in sql.migrations() if name.endswith("_flap_damping.sql"))
    conn = sqlite3.connect(tmp_path / "before.db")
    for number, _, script in sql.migrations():
        if number < ours:
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    conn.execute("INSERT INTO monitor_flips (id, name, old_state, new_state, created_at, status, "
                 "mail_state, mail_next_at) VALUES (7, 'x', 'up', 'down', 1, '{}', 'sent', 1)")
    conn.execute("INSERT INTO task_status (name, state, created_at) VALUES ('x', 'down', 1)")
    conn.commit()
    assert db.migrate_sync(conn) == max(n for n, _, _ in sql.migrations())
    assert conn.execute("SELECT id, mail_state FROM monitor_flips").fetchall() == [(7, "sent")]
    assert conn.execute("SELECT alerted_at, flaps FROM task_status").fetchall() == [(None, 0)]
    conn.execute("INSERT INTO monitor_flips (name, old_state, new_state, created_at, status, "
                 "mail_state, mail_next_at) VALUES ('x', 'down', 'up', 2, '{}', 'damped', 2)")
    assert [r[0] for r in conn.execute("SELECT id FROM monitor_flips ORDER BY id")] == [7, 8]
    conn.close()
