"""Healthchecks-compatible pings and their history (issue 19, items 2 and 3), against a real
daemon: /start, /fail, /{0-255}, /log, ?rid=, GET/POST/HEAD, durations, bodies kept up to
`monitoring.ping_body_limit`, the history bounded by `monitoring.ping_history` and pruned by
retention, and `runnerd monitors show NAME [--json]` with pings and flips."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from .conftest import Daemon, wait_until

pytestmark = pytest.mark.timeout(90)

CONFIG = """
monitoring: {ping_body_limit: 100, ping_history: 8, alert_interval: 0}
monitors:
  - {name: backup, period: 1h, grace: 1h}
  - {name: other, period: 1h, grace: 1h}
"""


def row(d: Daemon, name: str = "backup") -> sqlite3.Row:
    return d.query("SELECT * FROM task_status WHERE name = ?", (name,))[0]


def history(d: Daemon) -> list[sqlite3.Row]:
    return d.query("SELECT * FROM monitor_pings WHERE name = 'backup' ORDER BY id")


def age_pings(d: Daemon, seconds: float) -> None:
    """Move the stored pings back in time (what a clock moving forward would do)."""
    d.execute("UPDATE monitor_pings SET created_at = created_at - ?", (seconds,))


def test_healthchecks_ping_scheme(make_daemon: Any) -> None:
    d: Daemon = make_daemon(CONFIG).start()
    # Paths outside the scheme are 404 and recorded nowhere.
    for path in ("/ping/backup/256", "/ping/backup/nope", "/ping/backup/-1", "/ping/backup/1/2"):
        assert d.request("GET", path)[0] == 404, path
    assert history(d) == []
    # HEAD counts as a success, like GET and POST.
    assert d.request("HEAD", "/ping/backup")[0] == 200
    assert row(d)["last_status"] == "succeeded" and row(d)["state"] == "up"
    # A start then its finish (same rid): the duration is recorded; a start of another rid in
    # between does not pair with it.
    assert d.request("POST", "/ping/backup/start?rid=a1", "starting")[0] == 200
    assert row(d)["last_status"] == "started"
    age_pings(d, 42.0)
    assert d.request("GET", "/ping/backup/start?rid=b2")[0] == 200
    assert d.request("POST", "/ping/backup/0?rid=a1", "done")[0] == 200
    r = row(d)
    assert r["last_status"] == "succeeded" and 42.0 <= r["last_duration"] < 60
    finish = history(d)[-1]
    assert (finish["kind"], finish["exit_status"], finish["rid"], finish["body"]) == \
        ("success", 0, "a1", "done")
    assert finish["duration"] == r["last_duration"]
    # An exit status other than 0 is a failure; its body (cut to ping_body_limit) is the error.
    big = "x" * 5000
    assert d.request("POST", "/ping/backup/3?rid=b2", big)[0] == 200
    r = row(d)
    assert (r["last_status"], r["state"], r["last_error"]) == ("failed", "down", "x" * 100)
    failed = history(d)[-1]
    assert (failed["kind"], failed["exit_status"], failed["body_bytes"]) == ("fail", 3, 5000)
    assert failed["duration"] is not None and len(failed["body"]) == 100
    assert d.request("GET", "/ping/backup/fail")[0] == 200
    assert row(d)["last_error"] == "failure reported by /ping/backup/fail"
    assert d.request("GET", "/ping/backup/7")[0] == 200
    assert row(d)["last_error"] == "exit status 7 reported by /ping/backup/7"
    # /log is recorded and changes nothing.
    before = dict(row(d))
    assert d.request("POST", "/ping/backup/log", "just saying")[0] == 200
    assert dict(row(d)) == before and history(d)[-1]["kind"] == "log"
    # Recovery; then the history is bounded (ping_history: 8) and only backup's pings are there.
    assert d.request("GET", "/ping/backup")[0] == 200
    for _ in range(5):
        d.request("GET", "/ping/backup/log")
    assert len(history(d)) == 8
    assert d.query("SELECT COUNT(*) FROM monitor_pings WHERE name = 'other'")[0][0] == 0
    # `monitors show`: the pings and the flips, newest first.
    shown = json.loads(d.cli("monitors", "show", "backup", "--json", check=True).stdout)
    assert shown["name"] == "backup" and shown["state"] == "up"
    assert [p["kind"] for p in shown["pings"][:6]] == ["log"] * 5 + ["success"]
    assert len(shown["pings"]) == 8
    assert [(f["from"], f["to"]) for f in shown["flips"]] == [("down", "up"), ("up", "down")]
    text = d.cli("monitors", "show", "backup", check=True).stdout
    assert "monitor backup (ping): up" in text and "PINGS (8, newest first)" in text
    assert "FLIPS (2, newest first)" in text and "down -> up" in text
    assert d.cli("monitors", "show", "nope").returncode == 1
    # Retention prunes pings older than retention_days.
    age_pings(d, 400 * 86400)
    out = json.loads(d.cli("prune", "--json", check=True).stdout)
    assert history(d) == []
    # On PostgreSQL the daemon leads a moment after it starts, and its first janitor pass may
    # come between the ageing and the command: then the janitor pruned them, and says so.
    assert out["monitor_pings_pruned"] == 8 or (
        out["monitor_pings_pruned"] == 0 and "monitor_pings_pruned 8" in d.logs()), out
    assert d.stop() == 0


def test_rate_limit_and_ping_key_apply_to_every_ping_route(make_daemon: Any) -> None:
    d: Daemon = make_daemon("""
        monitoring: {ping_rate: 2}
        monitors:
          - {name: backup, period: 1h, grace: 1h}
          - {name: keyed, period: 1h, grace: 1h, ping_key: k3y}
        """).start()
    for path in ("/ping/keyed/log", "/ping/keyed/0", "/ping/keyed/start?rid=1"):
        assert d.request("HEAD", path)[0] == 401, path
    assert d.request("GET", "/ping/keyed/log?key=k3y")[0] == 200
    codes = [d.request("GET", path)[0] for path in
             ("/ping/backup/start", "/ping/backup/log", "/ping/backup/0", "/ping/backup/fail")]
    assert codes[:2] == [200, 200] and codes[2:] == [429, 429]
    wait_until(lambda: len(history(d)) == 2)
    assert d.query("SELECT COUNT(*) FROM monitor_pings WHERE name = 'keyed'")[0][0] == 1
    assert d.stop() == 0


def test_monitors_say_the_schedule_in_words(make_daemon: Any) -> None:
    d: Daemon = make_daemon("""
        timezone: Europe/Amsterdam
        monitors:
          - {name: nightly, schedule: "0 3 L * *", grace: 1h}
          - {name: sync, period: 15m, grace: 5m}
        """).create_database()
    listing = {m["name"]: m for m in json.loads(d.cli("monitors", "--json", check=True).stdout)}
    assert listing["nightly"]["schedule_in_words"] == "At 03:00 on the last day of every month"
    assert listing["sync"]["schedule_in_words"] is None
    text = d.cli("monitors", check=True).stdout
    assert "At 03:00 on the last day of every month (Europe/Amsterdam)" in text
    shown = d.cli("monitors", "show", "nightly", check=True).stdout
    assert "(At 03:00 on the last day of every month)" in shown
