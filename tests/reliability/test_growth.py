"""Bounded growth: retention deletes whole event trees (15 days after the tree completed, 90 when
something in it failed, never while a run in it is open), expired cache keys are purged, the side
tables (monitor_flips, outbox, workers, scheduler_slots) are pruned, and a soak of thousands of
runs keeps the file and the daemon's memory flat.

The clock is moved by rewriting times in the real SQLite file (a tree "finished 16 days ago" has
every created_at/started_at/finished_at shifted back 16 days); `runnerd prune --json` and the
daemon's janitor then run on the real clock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from bench import procs, soak
from runnerd.store import db

from ..conftest import Daemon
from .helpers import Loader, orders_config, wait_for

DAY = 86400.0

TREES = """
concurrency: 4
webhooks:
  - {name: orders, topic: user/orders/ready}
  - {name: later, topic: user/orders/later}
tasks:
  - name: Parent
    subscriptions: |
      user/orders/ready
      user/orders/later
    code: |
      {% if event.data.kind == "root_fails" %}{% action "echo", __error: "root boom" %}{% endif %}
      {% if event.data.kind == "child_later" %}
        {% action "event", topic: "user/child/made", data: event.data,
                  run_at: "2999-01-01T00:00:00Z" %}
      {% else %}
        {% action "event", topic: "user/child/made", data: event.data %}
      {% endif %}
  - name: Child
    subscriptions: user/child/made
    code: |
      {% if event.data.kind == "child_fails" %}{% action "echo", __error: "child boom" %}
      {% else %}{% action "echo", ok: true %}{% endif %}
  - name: Later
    subscriptions: user/orders/later+1.days
    code: |
      {% action "echo", later: true %}
"""

#: name -> (webhook, kind, age in days, kept by `runnerd prune`?)
CASES = {
    "ok_16d": ("orders", "ok", 16, False),
    "ok_14d": ("orders", "ok", 14, True),
    "child_fails_16d": ("orders", "child_fails", 16, True),
    "child_fails_91d": ("orders", "child_fails", 91, False),
    "root_fails_16d": ("orders", "root_fails", 16, True),
    "root_fails_91d": ("orders", "root_fails", 91, False),
    "child_later_200d": ("orders", "child_later", 200, True),  # a child's event run scheduled
    "root_later_200d": ("later", "ok", 200, True),  # the root's own task run scheduled (+1 day)
}

TREE_SQL = """WITH RECURSIVE tree (id) AS (
    SELECT id FROM events WHERE webhook_request_id = ?
    UNION SELECT c.id FROM events c JOIN tree ON c.parent_id = tree.id)"""


def tree_counts(d: Daemon, rid: str) -> tuple[int, int]:
    """(events, runs) of the tree under the webhook request `rid`."""
    row = d.query(f"{TREE_SQL} SELECT (SELECT COUNT(*) FROM tree), "
                  "(SELECT COUNT(*) FROM runs WHERE event_id IN tree)", (rid,))[0]
    return row[0], row[1]


def age_tree(d: Daemon, rid: str, days: float) -> None:
    """Move the whole tree `days` into the past (open runs keep their run_at)."""
    shift = days * DAY
    conn = sqlite3.connect(d.db_path, timeout=10)
    try:
        with conn:
            ids = [r[0] for r in conn.execute(f"{TREE_SQL} SELECT id FROM tree", (rid,))]
            marks = ",".join("?" * len(ids))
            conn.execute(f"UPDATE events SET created_at = created_at - ? WHERE id IN ({marks})",
                         (shift, *ids))
            conn.execute(f"""UPDATE runs SET created_at = created_at - ?,
                started_at = started_at - ?, finished_at = finished_at - ?,
                run_at = CASE WHEN state IN ('succeeded', 'failed') THEN run_at - ?
                              ELSE run_at END
                WHERE event_id IN ({marks})""", (shift, shift, shift, shift, *ids))
    finally:
        conn.close()


def open_runs(d: Daemon) -> int:
    return int(d.query("SELECT (SELECT COUNT(*) FROM runs WHERE state = 'due') + "
                       "(SELECT COUNT(*) FROM runs WHERE state = 'started')")[0][0])


def prune(d: Daemon) -> dict[str, int]:
    out = d.cli("prune", "--json")
    assert out.returncode == 0, out.stderr
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.mark.sqlite_only("seeds and ages rows with sqlite3 (retention on PostgreSQL: test_postgres.py)")
def test_retention_deletes_whole_trees_keeps_failed_and_open_ones(make_daemon) -> None:
    d: Daemon = make_daemon(TREES).start()
    rids = {}
    for name, (hook, kind, _, _) in CASES.items():
        status, headers, _ = d.post_json(f"/webhooks/{hook}", {"kind": kind, "case": name})
        assert status == 204
        rids[name] = headers["X-Request-Id"]
    # Done when nothing is due or started any more; what is left open is scheduled on purpose.
    wait_for(lambda: d.query("SELECT COUNT(*) FROM runs WHERE kind = 'action'")[0][0] >= 14
             and open_runs(d) == 0, message="every tree finished what it can")
    assert d.stop() == 0
    before = {name: tree_counts(d, rid) for name, rid in rids.items()}
    # The shapes the cases are about: a failure's error event is part of its tree.
    assert before["ok_16d"] == (2, 6)
    assert before["child_fails_16d"] == (3, 7)  # root, child, mechanic/errors/action
    assert before["root_fails_16d"] == (3, 8)  # root, child, mechanic/errors/action
    assert before["child_later_200d"][0] == 2 and before["root_later_200d"][0] == 2
    scheduled = d.query("SELECT COUNT(*) FROM runs WHERE state = 'scheduled'")[0][0]
    assert scheduled == 2
    for name, (_, _, days, _) in CASES.items():
        age_tree(d, rids[name], days)

    out = prune(d)
    gone = [n for n in CASES if not CASES[n][3]]
    assert out["trees_pruned"] == len(gone), out
    assert out["events_pruned"] == sum(before[n][0] for n in gone), out
    assert out["runs_pruned"] == sum(before[n][1] for n in gone), out
    for name, (_, _, _, kept) in CASES.items():
        assert tree_counts(d, rids[name]) == (before[name] if kept else (0, 0)), name
    # Nothing dangles: no run without its event, no attempt without its run.
    assert d.query("SELECT COUNT(*) FROM runs WHERE event_id NOT IN "
                   "(SELECT id FROM events)")[0][0] == 0
    assert d.query("SELECT COUNT(*) FROM run_attempts WHERE run_id NOT IN "
                   "(SELECT id FROM runs)")[0][0] == 0
    assert prune(d)["events_pruned"] == 0  # idempotent

    # The daemon applies the same retention by itself (defaults: 15/90 days), without the CLI:
    # its janitor runs on the first scheduler tick.
    age_tree(d, rids["ok_14d"], 2)
    d.start()
    wait_for(lambda: tree_counts(d, rids["ok_14d"]) == (0, 0), timeout=20,
             message="the janitor pruned the tree that turned 16 days old")
    for name in ("child_fails_16d", "root_fails_16d", "child_later_200d", "root_later_200d"):
        assert tree_counts(d, rids[name]) == before[name], name
    assert d.stop() == 0


SIDE = """
webhooks:
  - {name: orders, topic: user/orders/ready}
"""


@pytest.mark.sqlite_only("seeds and ages rows with sqlite3 (retention on PostgreSQL: test_postgres.py)")
def test_prune_purges_expired_cache_and_bounds_the_side_tables(make_daemon) -> None:
    d: Daemon = make_daemon(SIDE)
    conn = sqlite3.connect(d.db_path)
    db.migrate_sync(conn)
    now = time.time()
    with conn:
        conn.executemany("INSERT INTO cache (key, value, expires_at) VALUES (?, ?, ?)",
                         [("live", "1", now + 3600), ("dead", "2", now - 1),
                          ("dead2", "3", now - 10 * DAY)])
        flips = [("sent", 100), ("failed", 95), ("pending", 100), ("skipped", 100),
                 ("sent", 10)]
        conn.executemany(
            "INSERT INTO monitor_flips (name, old_state, new_state, created_at, status, "
            "mail_state, mail_next_at) VALUES ('m', 'up', 'down', ?, '{}', ?, ?)",
            [(now - age * DAY, state, now - age * DAY) for state, age in flips])
        conn.executemany(
            "INSERT INTO outbox (created_at, sender, recipients, subject, message) "
            "VALUES (?, 'a@example.com', '[]', 's', 'm')",
            [(now - age * DAY,) for age in (20, 16, 1)])
        conn.executemany(
            "INSERT INTO workers (id, pid, host, started_at, heartbeat_at, healthy) "
            "VALUES (?, 1, 'h', ?, ?, 0)",
            [(f"w{age}", now - age * DAY, now - age * DAY) for age in (30, 8, 1)])
        conn.executemany(
            "INSERT INTO scheduler_slots (topic, slot_at, fired_at) VALUES (?, ?, ?)",
            [(topic, now - age * DAY, now - age * DAY) for topic, age in (
                ("mechanic/scheduler/10min", 10), ("mechanic/scheduler/10min", 8),
                ("mechanic/scheduler/10min", 1), ("mechanic/scheduler/daily", 30))])
    conn.close()

    out = prune(d)
    assert (out["cache_keys_purged"], out["outbox_pruned"], out["workers_pruned"],
            out["scheduler_slots_pruned"]) == (2, 2, 2, 2), out
    # Flips: handled ones past 90 days go; the scan stops at the first pending alert (it is
    # still being mailed), so the one after it waits for the next prune.
    assert out["monitor_flips_pruned"] == 2, out
    assert [tuple(r) for r in d.query("SELECT mail_state FROM monitor_flips ORDER BY id")] == \
        [("pending",), ("skipped",), ("sent",)]
    assert [r[0] for r in d.query("SELECT key FROM cache")] == ["live"]
    assert d.cli("cache", "get", "live").stdout.strip() == "1"
    assert d.cli("cache", "get", "dead").returncode == 1
    assert [r[0] for r in d.query("SELECT id FROM workers ORDER BY id")] == ["w1"]
    slots = d.query("SELECT topic, slot_at FROM scheduler_slots ORDER BY topic, slot_at")
    assert [(r[0], round((now - r[1]) / DAY)) for r in slots] == [
        ("mechanic/scheduler/10min", 1), ("mechanic/scheduler/daily", 30)]  # latest stays
    text = d.cli("prune")
    assert text.returncode == 0 and text.stdout.startswith("pruned 0 event(s)"), text


#: Every table, and what keeps it from growing without bound. A new table fails this test until
#: someone says how it stays bounded.
GROWTH = {
    "events": "retention.prune_batch: whole trees past retention",
    "runs": "deleted with their event (ON DELETE CASCADE)",
    "run_attempts": "deleted with their run (ON DELETE CASCADE)",
    "cache": "cache.purge: expired keys (janitor and runnerd prune)",
    "scheduler_slots": "prune_slots: older than 7 days, each topic's latest kept",
    "outbox": "retention.prune_batch: older than retention_days",
    "monitor_flips": "flips_trim: the latest 100 per monitor; retention.prune_batch: handled "
                     "alerts older than retention_days_failed",
    "workers": "retention.prune_batch and start-up: no heartbeat for 7 days",
    "monitor_pings": "pings_trim: the latest monitoring.ping_history per monitor; "
                     "retention.prune_batch: older than retention_days",
    "task_status": "one row per task or monitor name in the configuration",
    "event_counts": "one row per event source (a handful)",
    "console_sessions": "expired sessions deleted at each console login; at most 1000 kept",
    "leases": "one row per lease name (the nodes' leader: 'leader'), renewed in place",
    "sqlite_sequence": "one row per AUTOINCREMENT table",
}


@pytest.mark.sqlite_only("seeds and ages rows with sqlite3 (retention on PostgreSQL: test_postgres.py)")
def test_every_table_has_a_bound(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "t.db")
    db.migrate_sync(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == set(GROWTH), f"unclassified: {tables - set(GROWTH)}; " \
                                  f"gone: {set(GROWTH) - tables}"


LOAD = orders_config('{% action "echo", i: event.data.i %}')


@pytest.mark.sqlite_only("seeds and ages rows with sqlite3 (retention on PostgreSQL: test_postgres.py)")
def test_prune_by_hand_of_a_large_backlog_while_the_daemon_takes_webhooks(make_daemon) -> None:
    d: Daemon = make_daemon(LOAD)
    history = procs.make_history(d.db_path, 60_000, now=time.time() - 30 * DAY)
    old = history["events"]
    d.start()
    loader = Loader(d.port).start()
    try:
        wait_for(lambda: len(loader.accepted) >= 20, message="webhook load")
        acked_before = len(loader.accepted)
        out = prune(d)
        acked_during = len(loader.accepted) - acked_before
    finally:
        loader.stop()
    report = f"{out} statuses={loader.statuses} acked_during_prune={acked_during}"
    print(report)
    assert set(loader.statuses) == {204}, report  # never a 503 behind the prune's transactions
    # The janitor (first tick) and the CLI share the work; together: every old tree, whole,
    # apart from the 1 % with a failed action, kept for 90 days.
    failed = d.query("SELECT COUNT(*) FROM runs WHERE state = 'failed'")[0][0]
    left_old = d.query("SELECT COUNT(*) FROM events WHERE created_at < ?",
                       (time.time() - 20 * DAY,))[0][0]
    assert left_old == failed > 0, report
    assert out["events_pruned"] <= old - failed
    stored = {r[0] for r in d.query("SELECT webhook_request_id FROM events")}
    assert set(loader.accepted) <= stored, "nothing young was pruned"
    assert d.stop() == 0


# --- the soak, small: thousands of runs through the real daemon, retention in seconds ----------

def test_soak_quick_file_size_and_rss_plateau(tmp_path: Path) -> None:
    # The janitor comes round every 0.1 s and trees expire 0.17 s after they finish; the queue is
    # held under 150 open runs, so what the file holds is what retention leaves.
    result = soak.run(tmp_path, runs=7500, retention_days=soak.QUICK_RETENTION_DAYS,
                      janitor_every=0.1, backlog=150, samples=4, measure_claim=False,
                      log=print)
    first, second = result["halves"]
    report = json.dumps({k: result[k] for k in ("runs", "seconds", "halves", "runs_pruned",
                                                "rows_left", "statuses")})
    print(report)
    assert result["runs"] >= 7500 and result["statuses"] == {"204": result["webhooks"]}, report
    # Retention really applied: most of what ran is gone from the database.
    assert result["runs_pruned"] >= 0.5 * result["runs"], report
    # Plateau, not a fixed number: without retention the file doubles from half way to the end.
    assert second["db_bytes"] <= 1.5 * first["db_bytes"], report
    assert second["wal_bytes"] <= 1.5 * first["wal_bytes"], report
    assert second["rss_kib"] <= 1.5 * first["rss_kib"], report
    assert result["quick_check"] == "ok" and result["daemon_exit"] == 0, report


@pytest.mark.skipif(os.environ.get("RUNNERD_SOAK") != "1",
                    reason="the 1M-run soak takes a long while: RUNNERD_SOAK=1 (or scripts/soak)")
@pytest.mark.timeout(3 * 3600)
def test_soak_one_million_runs(tmp_path: Path) -> None:
    result = soak.run(tmp_path, runs=1_000_000, samples=20, log=print)
    first, second = result["halves"]
    assert second["db_bytes"] <= 1.5 * first["db_bytes"], result
    assert second["wal_bytes"] <= 1.5 * first["wal_bytes"], result
    assert second["rss_kib"] <= 1.5 * first["rss_kib"], result
    assert result["runs_pruned"] >= 0.9 * result["runs"], result
    for phase in ("empty", "history"):
        assert result["claim"][phase]["uses_runs_due"], result["claim"]
