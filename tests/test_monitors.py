"""Monitors: the cron parser, the pure state function, task_status written by runs.finish, flips
(one event and one alert per transition, durable across restarts), pings and the CLI commands,
against a real SQLite file, a real aiosmtpd server and the real daemon."""

from __future__ import annotations

import datetime as dt
import json
import re
import textwrap
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runnerd import config, models
from runnerd.config import cron
from runnerd.monitoring import monitors
from runnerd.queue import runs, taskstatus
from runnerd.store import db

from .conftest import Daemon, ping, wait_until
from .helpers_servers import refused_port, smtp_server

UTC = ZoneInfo("UTC")
AMS = ZoneInfo("Europe/Amsterdam")


def at(text: str, tz: ZoneInfo = UTC) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def local(ts: float, tz: ZoneInfo = UTC) -> str:
    return dt.datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M %z")


# --- cron -----------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, after, expected", [
    ("0 3 * * *", "2025-06-01 03:00", "2025-06-02 03:00 +0000"),
    ("0 3 * * *", "2025-06-01 02:59", "2025-06-01 03:00 +0000"),
    ("*/15 * * * *", "2025-06-01 10:07", "2025-06-01 10:15 +0000"),
    ("5,35 9-17/4 * * *", "2025-06-01 13:40", "2025-06-01 17:05 +0000"),
    ("0 9 * * mon-fri", "2025-06-06 09:00", "2025-06-09 09:00 +0000"),  # Fri -> Mon
    ("0 0 1 jan *", "2025-06-01 00:00", "2026-01-01 00:00 +0000"),
    ("0 0 29 2 *", "2025-01-01 00:00", "2028-02-29 00:00 +0000"),
    ("0 12 13 * 5", "2025-06-01 00:00", "2025-06-06 12:00 +0000"),  # 13th OR a Friday
    ("0 0 * * 7", "2025-06-01 00:00", "2025-06-08 00:00 +0000"),  # 7 is Sunday
    # Both day fields restricted, neither starting with `*`: either matches (Vixie cron).
    ("0 0 1,15 * 5", "2025-06-01 00:00", "2025-06-06 00:00 +0000"),
    # `*/2` starts with `*`: both must match (Mondays on odd days), never "daily" (issue 19).
    ("0 0 */2 * 1", "2025-06-01 00:00", "2025-06-09 00:00 +0000"),
    ("0 0 */2 * 1", "2025-06-09 00:00", "2025-06-23 00:00 +0000"),
    ("0 3 L * *", "2025-02-01 00:00", "2025-02-28 03:00 +0000"),  # the last day of the month
    ("0 9 * * 5L", "2025-06-01 00:00", "2025-06-27 09:00 +0000"),  # the last Friday
    ("0 9 * * 1#2", "2025-06-01 00:00", "2025-06-09 09:00 +0000"),  # the second Monday
])
def test_cron_next_after(expr: str, after: str, expected: str) -> None:
    assert local(cron.next_after(cron.parse(expr), at(after), UTC)) == expected


def test_cron_dst_like_cron() -> None:
    daily = cron.parse("30 2 * * *")
    # 2025-03-30 02:30 does not exist in Amsterdam: it fires when the clock jumps (03:00), not
    # the next day; 2025-10-26 02:30 happens twice and fires once.
    assert local(cron.next_after(daily, at("2025-03-29 03:00", AMS), AMS), AMS) == \
        "2025-03-30 03:00 +0200"
    first = cron.next_after(daily, at("2025-10-26 00:00", AMS), AMS)
    second = cron.next_after(daily, first, AMS)
    assert (local(first, AMS), local(second, AMS)) == ("2025-10-26 02:30 +0200",
                                                      "2025-10-27 02:30 +0100")


@pytest.mark.parametrize("expr, words", [
    ("0 3 * * *", "At 03:00 every day"),
    ("*/15 9-17 * * mon-fri", "Every 15th minute from 09:00 through 17:59 on Monday through "
                              "Friday"),
    ("0 3 L * *", "At 03:00 on the last day of every month"),
    ("0 9 * * 1#2", "At 09:00 on the second Monday of the month"),
])
def test_cron_in_words(expr: str, words: str) -> None:
    assert cron.describe(cron.parse(expr)) == words


@pytest.mark.parametrize("expr", ["* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
                                  "*/0 * * * *", "5-1 * * * *", "* * * foo *", "0 0 31 2 *",
                                  "0 0 * * 1#6"])
def test_cron_rejects(expr: str) -> None:
    with pytest.raises(ValueError, match=f"bad schedule '{re.escape(expr)}': (bad|wrong) "):
        cron.parse(expr)


def test_bad_schedule_fails_check(tmp_path: Path) -> None:
    from runnerd import daemon, errors

    path = tmp_path / "c.yaml"
    path.write_text("database: x.db\nmonitors:\n  - {name: b, schedule: '61 * * * *', grace: 1m}\n")
    with pytest.raises(errors.ConfigError) as exc:
        daemon.load(str(path), {})
    assert exc.value.problems == ["monitors[0].schedule: bad schedule '61 * * * *': bad minute "
                                  "(5 fields: minute hour day-of-month month day-of-week)"]
    # A schedule that parses but never comes (30 February) would fail every evaluation: it is
    # refused by the configuration itself, so the command line (config.load) refuses it too.
    path.write_text("database: x.db\nmonitors:\n  - {name: b, schedule: '0 0 30 2 *'}\n")
    with pytest.raises(errors.ConfigError) as exc:
        config.load(str(path), {})
    assert exc.value.problems == [
        "monitors[0].schedule: bad schedule '0 0 30 2 *': bad day-of-month (5 fields: minute "
        "hour day-of-month month day-of-week)"]


# --- the state function ---------------------------------------------------------------------

def row(**kw: Any) -> dict[str, Any]:
    base = {"state": "new", "last_success_at": None, "last_failure_at": None,
            "last_started_at": None, "expect_from": None}
    return {**base, **kw}


def test_evaluate_period_and_grace() -> None:
    spec = taskstatus.Spec(grace=60, period=600)
    ev = taskstatus.evaluate
    assert ev(spec, row(), 1000) == "new"  # never reported: never alerts
    assert ev(spec, row(last_success_at=0), 599) == "up"
    assert ev(spec, row(last_success_at=0), 600) == "late"
    assert ev(spec, row(last_success_at=0), 659) == "late"
    assert ev(spec, row(last_success_at=0), 660) == "down"
    assert ev(spec, row(last_success_at=0, last_failure_at=5), 6) == "down"  # at once
    assert ev(spec, row(last_success_at=9, last_failure_at=5), 10) == "up"
    assert ev(spec, row(last_failure_at=5), 6) == "down"
    # After /start, a run longer than grace is down, whatever the period says.
    assert ev(spec, row(last_success_at=0, last_started_at=100), 159) == "up"
    assert ev(spec, row(last_success_at=0, last_started_at=100), 160) == "down"
    assert ev(spec, row(last_success_at=170, last_started_at=100), 200) == "up"
    assert ev(spec, row(last_started_at=100), 161) == "down"
    assert ev(spec, row(state="paused", last_failure_at=5), 6) == "paused"
    assert ev(None, row(last_failure_at=5), 6) == "new"  # not a monitor
    # Resumed at 1000 after an old failure: new until a period (+ grace) passes.
    assert ev(spec, row(last_failure_at=5, expect_from=1000), 1100) == "new"
    assert ev(spec, row(last_failure_at=5, expect_from=1000), 1600) == "late"
    assert ev(spec, row(last_failure_at=5, expect_from=1000), 1660) == "down"


def test_evaluate_cron_in_timezone() -> None:
    spec = taskstatus.Spec(grace=3600, schedule="0 3 * * *", timezone="Europe/Amsterdam")
    ping = at("2025-06-01 03:05", AMS)
    assert taskstatus.evaluate(spec, row(last_success_at=ping), at("2025-06-02 02:59", AMS)) == "up"
    assert taskstatus.evaluate(spec, row(last_success_at=ping), at("2025-06-02 03:00", AMS)) == \
        "late"
    assert taskstatus.evaluate(spec, row(last_success_at=ping), at("2025-06-02 04:00", AMS)) == \
        "down"


# --- task_status in runs.finish, flips, alerts (in process, real SQLite and SMTP) ----------------

def settings(tmp_path: Path, extra: str = "") -> config.Settings:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent("""\
        database: test.db
        monitoring: {mail_recipients: [ops@example.com], alert_interval: 0}  # one per change
        monitors:
          - {name: backup, period: 10m, grace: 1m}
          - {task: Job, period: 1h, grace: 5m}
        tasks:
          - {name: Job, subscriptions: "mechanic/user/trigger", code: "x"}
          - {name: Other, subscriptions: "mechanic/user/trigger", code: "x"}
        """) + extra)
    return config.load(str(path), {})


async def finish_task_run(database: db.Database, task: str, ok: bool, now: float, *,
                          retryable: bool = False) -> None:
    event = runs.new_event("user/a/b", None, "cli", now)
    await database.write(lambda tx: runs.insert_events(tx, [event], now))

    def go(tx: db.Tx) -> None:
        run_id = tx.execute("insert_run", runs.run_row(models.RunKind.TASK, event.id, now,
                                                       task_name=task)).lastrowid
        (job,) = [runs.begin(j, now) for j in runs.due_task_runs(tx, 100, now) if j.run.id == run_id]
        runs.finish(tx, runs.Outcome(job.run, ok=ok, error=None if ok else "boom",
                                     retryable=retryable, finished_at=now + 1), now + 1)

    await database.write(go)


async def status_row(database: db.Database, name: str) -> Any:
    return await database.read(lambda tx: tx.one("status_get", {"name": name}))


async def events_on(database: db.Database, topic: str) -> list[Any]:
    return await database.read(lambda tx: tx.conn.execute(
        "SELECT * FROM events WHERE topic = ? ORDER BY created_at", (topic,)).fetchall())


async def test_finish_writes_task_status_with_the_final_state(database: db.Database) -> None:
    await finish_task_run(database, "Other", True, 100.0)
    r = await status_row(database, "Other")
    assert (r["last_status"], r["last_success_at"], r["last_run_at"], r["state"]) == \
        ("succeeded", 101.0, 101.0, "new")
    await finish_task_run(database, "Other", False, 200.0, retryable=True)  # a retry: no change
    assert (await status_row(database, "Other"))["last_status"] == "succeeded"
    await finish_task_run(database, "Other", False, 300.0)
    r = await status_row(database, "Other")
    assert (r["last_status"], r["last_failure_at"], r["last_error"], r["last_success_at"]) == \
        ("failed", 301.0, "boom", 101.0)


async def test_a_report_reads_the_row_back_only_for_a_monitor(database: db.Database) -> None:
    def report(tx: db.Tx, name: str) -> list[int]:
        return [tx.one("status_report", {"name": name, "status": "succeeded", "now": float(i),
                                         "error": None})["evaluated"] for i in range(2)]

    # A task without a monitor (the common case): nothing to evaluate, no read-back.
    assert await database.write(lambda tx: report(tx, "Plain")) == [0, 0]
    await database.write(lambda tx: tx.execute("status_set_monitor", {
        "name": "Watched", "monitor": '{"period": 60}', "now": 0.0}))
    assert await database.write(lambda tx: report(tx, "Watched")) == [1, 1]


async def test_a_task_monitor_flips_once_per_transition(database: db.Database,
                                                        tmp_path: Path) -> None:
    mon = monitors.Monitors(database, lambda: settings(tmp_path))
    s0 = settings(tmp_path)
    mon.get_settings = lambda: s0
    assert await mon.tick(0.0) == []
    await finish_task_run(database, "Job", True, 10.0)
    assert (await status_row(database, "Job"))["state"] == "up"  # in finish's transaction
    await finish_task_run(database, "Job", False, 20.0)  # a failure: down at once, one event
    assert (await status_row(database, "Job"))["state"] == "down"
    assert len(await events_on(database, taskstatus.DOWN_TOPIC)) == 1
    for now in (30.0, 31.0, 5000.0):
        assert await mon.tick(now) == []  # still down: never one alert per tick
    await finish_task_run(database, "Job", True, 6000.0)
    up = await events_on(database, taskstatus.UP_TOPIC)
    assert len(up) == 1 and json.loads(up[0]["data"])["previous_state"] == "down"
    assert len(await events_on(database, taskstatus.DOWN_TOPIC)) == 1
    # Late after the period, down after grace more: exactly one more down event.
    assert await mon.tick(6001 + 3600) == []
    assert (await status_row(database, "Job"))["state"] == "late"
    (event,) = await mon.tick(6001 + 3600 + 300)
    assert event.topic == taskstatus.DOWN_TOPIC and event.data["name"] == "Job"
    assert event.data["state"] == "down" and event.data["previous_state"] == "late"
    assert await mon.tick(6001 + 3600 + 301) == []
    flips = await database.read(lambda tx: tx.conn.execute(
        "SELECT old_state, new_state FROM monitor_flips ORDER BY id").fetchall())
    assert [tuple(f) for f in flips] == [("up", "down"), ("down", "up"), ("late", "down")]


async def test_alerts_are_durable_and_never_resent(database: db.Database, tmp_path: Path) -> None:
    with smtp_server() as (controller, recorder):
        s = settings(tmp_path, f"email: {{transport: smtp, from: rd@example.com, "
                               f"smtp: {{host: 127.0.0.1, port: {controller.port}}}}}\n")
        first = monitors.Monitors(database, lambda: s)
        await first.tick(0.0)
        await ping(database, "backup", "succeeded", b"", 0.0)
        await first.tick(100.0)
        # The daemon is down from 100 s to 10_000 s: the alert that came due is not missed...
        second = monitors.Monitors(database, lambda: s)
        (event,) = await second.tick(10_000.0)
        assert event.data["name"] == "backup"
        assert await second.deliver(10_000.0) == 1
        assert len(recorder.messages) == 1
        message = recorder.messages[0].data.decode()
        assert "Subject: runnerd: monitor backup is DOWN" in message
        assert recorder.messages[0].rcpt_tos == ["ops@example.com"]
        # ...and a restart neither re-sends it nor flips again.
        third = monitors.Monitors(database, lambda: s)
        assert await third.tick(10_001.0) == []
        assert await third.deliver(10_001.0) == 0
        await ping(database, "backup", "succeeded", b"", 10_002.0)
        assert await third.deliver(10_002.0) == 1
        assert len(recorder.messages) == 2
        assert "is UP again" in recorder.messages[1].data.decode()
        for m in (first, second, third):
            if m._executor is not None:
                await m._executor.close()
    states = await database.read(lambda tx: tx.conn.execute(
        "SELECT mail_state, mail_sent_at IS NOT NULL FROM monitor_flips").fetchall())
    assert [tuple(r) for r in states] == [("sent", 1), ("sent", 1)]


async def test_alert_retry_outbox_and_no_recipients(database: db.Database,
                                                    tmp_path: Path) -> None:
    with refused_port() as port:
        s = settings(tmp_path, f"email: {{transport: smtp, smtp: {{host: 127.0.0.1, "
                               f"port: {port}, timeout: 2s}}}}\n")
        mon = monitors.Monitors(database, lambda: s)
        await mon.tick(0.0)
        await ping(database, "backup", "failed", b"disk full", 1.0)
        assert await mon.deliver(1.0) == 1
        if mon._executor is not None:
            await mon._executor.close()
    flip = await database.read(lambda tx: tx.one("flips_due", {"now": 1e9, "limit": 1}))
    assert flip["mail_state"] == "pending" and flip["mail_attempts"] == 1
    assert flip["mail_next_at"] == pytest.approx(1.0 + monitors.ALERT_BACKOFF[0])
    assert "cannot deliver" in flip["mail_error"]
    assert json.loads(flip["status"])["last_error"] == "disk full"
    # Now the transport is the outbox: the alert lands there, in the flip's transaction.
    s2 = settings(tmp_path, "email: {transport: outbox, from: rd@example.com}\n")
    mon2 = monitors.Monitors(database, lambda: s2)
    assert await mon2.deliver(100.0) == 1
    outbox = await database.read(lambda tx: tx.conn.execute("SELECT * FROM outbox").fetchall())
    assert len(outbox) == 1 and outbox[0]["subject"] == "runnerd: monitor backup is DOWN"
    assert json.loads(outbox[0]["recipients"]) == ["ops@example.com"]
    # Without recipients the flip is recorded as skipped.
    await ping(database, "backup", "succeeded", b"", 101.0)
    s3 = settings(tmp_path)
    s3 = config.Settings(**{**{f: getattr(s3, f) for f in s3.__dataclass_fields__},
                            "monitoring": config.Monitoring()})
    assert await monitors.Monitors(database, lambda: s3).deliver(102.0) == 1
    last = await database.read(lambda tx: tx.conn.execute(
        "SELECT mail_state FROM monitor_flips ORDER BY id DESC LIMIT 1").fetchone())
    assert last["mail_state"] == "skipped"


def test_check_tasks() -> None:
    now = 10_000.0
    found = {
        "ok": {"last_run_at": now - 60, "last_success_at": now - 60, "last_status": "succeeded",
               "last_error": None},
        "stale": {"last_run_at": now - 7200, "last_success_at": now - 7200,
                  "last_status": "succeeded", "last_error": None},
        "failing": {"last_run_at": now - 5, "last_success_at": now - 60,
                    "last_status": "failed", "last_error": "boom"},
    }
    out = monitors.check_tasks(found, [("ok", 5), ("stale", 60), ("failing", 60),
                                       ("unknown", 5)], now)
    assert [r["status"] for r in out] == ["ok", "stale", "failing", "unknown"]
    assert set(out[0]) == {"name", "status", "last_run_at", "last_success_at", "last_status",
                           "last_error"}


# --- the real daemon: pings, events to tasks, alert email, CLI --------------------------------

def ping_config(smtp_port: int) -> str:
    return f"""
        email: {{transport: smtp, from: runnerd@example.com,
                 smtp: {{host: 127.0.0.1, port: {smtp_port}}}}}
        monitoring: {{mail_recipients: [ops@example.com], alert_interval: 0}}
        monitors:
          - {{name: backup, period: 1s, grace: 1s}}
          - {{name: other, period: 1h, grace: 1h}}
        tasks:
          - name: On down
            subscriptions: |
              runnerd/monitors/down
            code: |
              {{% action "echo", monitor: event.data.name, state: event.data.state %}}
        """


def test_pings_flip_alert_and_feed_tasks(make_daemon) -> None:
    with smtp_server() as (controller, recorder):
        d: Daemon = make_daemon(ping_config(controller.port)).start()
        assert d.request("GET", "/ping/nope")[0] == 404
        assert d.request("PUT", "/ping/backup")[0] == 405
        status, _, body = d.request("POST", "/ping/backup/start")
        assert (status, body) == (200, b"OK\n")
        rows = {r["name"]: r for r in d.query("SELECT * FROM task_status")}
        assert rows["backup"]["last_status"] == "started" and rows["other"]["last_run_at"] is None
        assert d.request("GET", "/ping/backup")[0] == 200
        assert d.query("SELECT state FROM task_status WHERE name = 'backup'")[0][0] == "up"
        # No success within period + grace: down, one event, one email, the task ran on it.
        d.wait_runs("kind = 'action' AND state = 'succeeded'", 1, timeout=10)
        echo = json.loads(d.query("SELECT result FROM runs WHERE kind = 'action'")[0][0])
        assert echo == {"monitor": "backup", "state": "down"}
        wait_until(lambda: len(recorder.messages) == 1, timeout=10)
        assert b"monitor backup is DOWN" in recorder.messages[0].data
        # /fail keeps its body (up to 10 KB) as the error; only that row changes.
        big = "E" * 20_000
        assert d.request("POST", "/ping/backup/fail", big)[0] == 200
        row = d.query("SELECT * FROM task_status WHERE name = 'backup'")[0]
        assert row["last_status"] == "failed" and row["last_error"] == "E" * 10240
        assert d.query("SELECT last_run_at FROM task_status WHERE name = 'other'")[0][0] is None
        assert d.request("POST", "/ping/backup", "all good")[0] == 200
        wait_until(lambda: len(recorder.messages) == 2, timeout=10)
        assert b"is UP again" in recorder.messages[1].data
        topics = [r[0] for r in d.query(
            "SELECT topic FROM events WHERE topic LIKE 'runnerd/monitors/%' ORDER BY created_at")]
        assert topics[:2] == ["runnerd/monitors/down", "runnerd/monitors/up"]
        # pause / resume from the CLI, seen by the daemon.
        out = d.cli("monitors", "pause", "backup")
        assert out.returncode == 0 and "paused" in out.stdout
        listing = json.loads(d.cli("monitors", "--json").stdout)
        assert {m["name"]: m["state"] for m in listing} == {"backup": "paused", "other": "new"}
        assert d.cli("monitors", "pause", "nope").returncode == 1
        assert "now new" in d.cli("monitors", "resume", "backup").stdout
        assert d.stop() == 0


def test_monitor_tasks_command(make_daemon) -> None:
    with smtp_server() as (controller, recorder):
        d: Daemon = make_daemon(ping_config(controller.port) + """
          - name: Job
            subscriptions: |
              mechanic/user/trigger
            code: |
              {% if event.data == nil %}{% error "it broke" %}{% endif %}
        """).start()
        d.cli("trigger", "Job", check=True)
        d.wait_runs("kind = 'task' AND task_name = 'Job' AND state = 'failed'", 1)
        d.request("GET", "/ping/other")
        out = d.cli("monitor", "tasks", "--task", "other", "5", "--task", "Job", "60",
                    "--task", "nope", "5", "--json")
        assert out.returncode == 1, out.stderr
        result = json.loads(out.stdout)
        assert [(r["name"], r["status"]) for r in result] == [
            ("other", "ok"), ("Job", "failing"), ("nope", "unknown")]
        assert result[1]["last_error"] == "it broke" and result[1]["last_status"] == "failed"
        assert "alert email sent" in out.stderr
        assert len(recorder.messages) == 1
        assert b"2 task(s) not OK: Job, nope" in recorder.messages[0].data
        text = d.cli("monitor", "tasks", "--task", "other", "5", "--no-mail")
        assert text.returncode == 0 and text.stdout.startswith("ok       other:")
        assert len(recorder.messages) == 1
        assert d.cli("monitor", "tasks", "--task", "other", "x").returncode == 2  # usage
        assert d.stop() == 0


# --- end to end: a ping monitor's whole life, restarts included (issue 5) ----------------------

def lifecycle_config(smtp_port: int) -> str:
    return f"""
        email: {{transport: smtp, from: runnerd@example.com,
                 smtp: {{host: 127.0.0.1, port: {smtp_port}}}}}
        monitoring: {{mail_recipients: [ops@example.com], alert_interval: 0}}
        monitors:
          - {{name: job, period: 2s, grace: 2s}}
        """


def monitor_state(d: Daemon) -> str | None:
    rows = d.query("SELECT state FROM task_status WHERE name = 'job'")
    return rows[0][0] if rows else None


def alerts(d: Daemon, recorder: Any) -> dict[str, int]:
    """Events and emails so far, by kind."""
    topics = [r[0] for r in d.query("SELECT topic FROM events WHERE topic LIKE "
                                    "'runnerd/monitors/%'")]
    subjects = [m.data.split(b"\r\nSubject: ")[1].split(b"\r\n")[0].decode() if b"\r\nSubject: "
                in m.data else m.data.decode(errors="replace") for m in recorder.messages]
    return {"down_events": topics.count("runnerd/monitors/down"),
            "up_events": topics.count("runnerd/monitors/up"),
            "down_mails": sum(s == "runnerd: monitor job is DOWN" for s in subjects),
            "up_mails": sum(s == "runnerd: monitor job is UP again" for s in subjects),
            "mails": len(recorder.messages)}


def monitors_ticked(d: Daemon) -> bool:
    """The (re)started daemon has evaluated the monitors at least once."""
    status, _, body = d.request("GET", "/health")
    return status in (200, 503) and json.loads(body).get("monitors_last_tick") is not None


def test_ping_monitor_new_up_late_down_up_with_a_restart_while_down(make_daemon) -> None:
    with smtp_server() as (controller, recorder):
        d: Daemon = make_daemon(lifecycle_config(controller.port)).start()
        wait_until(lambda: monitor_state(d) == "new", timeout=10)
        assert d.request("POST", "/ping/job")[0] == 200
        assert monitor_state(d) == "up"
        seen: list[str] = []

        def track() -> bool:
            state = monitor_state(d)
            if not seen or seen[-1] != state:
                seen.append(str(state))
            return state == "down"

        wait_until(track, timeout=10)
        assert seen == ["up", "late", "down"], seen
        wait_until(lambda: alerts(d, recorder)["down_mails"] == 1, timeout=10)
        assert recorder.messages[0].rcpt_tos == ["ops@example.com"]

        # Restarted while down: the new process re-evaluates the row and finds nothing to flip.
        assert d.stop() == 0
        d.start()
        wait_until(lambda: monitors_ticked(d), timeout=10)
        assert monitor_state(d) == "down"
        assert d.request("POST", "/ping/job")[0] == 200
        assert monitor_state(d) == "up"
        # The up alert comes after any alert queued before it (flips are mailed in order): once
        # it is here, a second down alert from the restart would be here too.
        wait_until(lambda: alerts(d, recorder)["up_mails"] == 1, timeout=10)
        assert alerts(d, recorder) == {"down_events": 1, "up_events": 1, "down_mails": 1,
                                       "up_mails": 1, "mails": 2}

        def flips() -> list[tuple[str, str, str]]:
            return [tuple(r) for r in d.query(
                "SELECT old_state, new_state, mail_state FROM monitor_flips ORDER BY id")]

        # The SMTP server has the mail a moment before the daemon commits it as sent.
        wait_until(lambda: flips()[-1][2] == "sent", timeout=10)
        assert flips() == [("late", "down", "sent"), ("down", "up", "sent")]
        assert d.stop() == 0


def test_ping_monitor_deadline_passing_while_stopped_alerts_once(make_daemon) -> None:
    with smtp_server() as (controller, recorder):
        d: Daemon = make_daemon(lifecycle_config(controller.port)).start()
        wait_until(lambda: monitor_state(d) == "new", timeout=10)
        assert d.request("POST", "/ping/job")[0] == 200
        assert monitor_state(d) == "up"
        assert d.stop() == 0
        success = d.query("SELECT last_success_at FROM task_status WHERE name = 'job'")[0][0]
        # Period and grace both run out while no daemon is there to notice.
        wait_until(lambda: time.time() > success + 2 + 2 + 0.2, timeout=10)
        assert monitor_state(d) == "up" and alerts(d, recorder)["mails"] == 0
        d.start()
        wait_until(lambda: alerts(d, recorder)["down_mails"] == 1, timeout=10)
        assert monitor_state(d) == "down"
        assert d.request("POST", "/ping/job")[0] == 200
        wait_until(lambda: alerts(d, recorder)["up_mails"] == 1, timeout=10)
        assert alerts(d, recorder) == {"down_events": 1, "up_events": 1, "down_mails": 1,
                                       "up_mails": 1, "mails": 2}
        flips = [tuple(r) for r in d.query(
            "SELECT old_state, new_state FROM monitor_flips ORDER BY id")]
        assert flips == [("up", "down"), ("down", "up")]  # straight to down: late was missed
        assert d.stop() == 0
