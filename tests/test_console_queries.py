"""The console's lists stay fast and bounded on a large database (issue 21, SPEC §15).

Every filter combination the runs and events pages offer (state, kind, task, since, until,
the keyset cursor; topic, time, one id) is planned as index searches only, never a scan of
runs or events, on SQLite (EXPLAIN QUERY PLAN: no sort but the merge of the pages) and on
PostgreSQL (EXPLAIN ANALYZE), and the work it does does not grow with the rows it does not
show: on SQLite the virtual-machine steps (a progress handler, no clock) stay the same when the
tables grow tenfold; on PostgreSQL the rows the plan visits stay within a page per (kind,
state) pair.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from runnerd.store import db, sql
from runnerd.web.console import pages

pytestmark = pytest.mark.timeout(240)

T0 = 1_700_000_000.0
#: the console pages' other queries, with parameters as the pages pass them
OTHERS: dict[str, dict[str, Any]] = {
    "console_task_runs": {"names": json.dumps(["Rare", "Task 3"]), "per_task": 5},
    "console_run_tree": {"event_id": "ev-00000005", "limit": 200},
    "console_runs_of_events": {"ids": json.dumps(["ev-00000005", "ev-00000009"]),
                               "limit": 1000},
    "console_child_events": {"id": "ev-00000005", "limit": 200},
}


def _shapes() -> Iterator[tuple[str, dict[str, str]]]:
    """Every combination of the runs page's filters, and of the events page's."""
    cursor_run = {"before": f"{T0 + 50_000!r}:50001"}  # event 12500's run
    for task, kind, state, since, until, before in itertools.product(
            ["", "Rare"], ["", "event", "task", "action"], ["", "failed", "succeeded"],
            ["", "2023-11-15T10:00"], ["", "2023-11-15T12:00"], [{}, cursor_run]):
        q = {"task": task, "kind": kind, "state": state, "since": since, "until": until,
             **before}
        if not (task and kind == "event"):
            yield "runs", {k: v for k, v in q.items() if v}
    for topic, since, until, before in itertools.product(
            ["", "user/rare/thing"], ["", "2023-11-15T10:00"], ["", "2023-11-15T12:00"],
            [{}, {"before": f"{T0 + 50_000!r}:ev-00012500"}]):
        q = {"topic": topic, "since": since, "until": until, **before}
        yield "events", {k: v for k, v in q.items() if v}
    yield "events", {"id": "ev-00012007"}


def _query(page: str, q: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    return pages.runs_query(q) if page == "runs" else pages.events_query(q)


# -- SQLite ------------------------------------------------------------------------------------

def _fill_sqlite(conn: sqlite3.Connection, first: int, events: int, fails: int = 200) -> None:
    """`events` events from number `first`, each with an event run, a task run and two action
    runs; a rare task and topic every 5000th event; the runs of every `fails`th event failed
    (0: none)."""
    conn.execute("""WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n
                                             WHERE i < :first + :events - 1)
        INSERT INTO events (id, topic, data, source, created_at)
        SELECT printf('ev-%08d', i), CASE WHEN i % 5000 = 0 THEN 'user/rare/thing'
                                          ELSE 'user/t' || (i % 10) || '/go' END,
               '{}', 'webhook', :t0 + i * 4 FROM n""",
                 {"first": first, "events": events, "t0": T0})
    conn.execute("""WITH RECURSIVE n(i) AS (SELECT :first * 4 UNION ALL SELECT i + 1 FROM n
                                             WHERE i < (:first + :events) * 4 - 1)
        INSERT INTO runs (id, kind, state, priority, run_at, event_id, task_name, action_type,
                          created_at, attempts)
        SELECT i + 1, CASE i % 4 WHEN 0 THEN 'event' WHEN 1 THEN 'task' ELSE 'action' END,
               CASE WHEN :fails > 0 AND (i / 4) % :fails = 7 AND i % 4 > 0 THEN 'failed' ELSE 'succeeded' END,
               1, :t0, printf('ev-%08d', i / 4),
               CASE WHEN i % 4 = 0 THEN NULL WHEN (i / 4) % 5000 = 0 THEN 'Rare'
                    ELSE 'Task ' || ((i / 4) % 20) END,
               CASE WHEN i % 4 >= 2 THEN 'http' END, :t0 + (i / 4) * 4 + (i % 4) * 0.001, 1
        FROM n""", {"first": first, "events": events, "t0": T0, "fails": fails})


def _steps(conn: sqlite3.Connection, text: str, params: dict[str, Any]) -> tuple[int, int]:
    """(virtual-machine steps, rows) of running a statement: work, counted without a clock."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        rows = conn.execute(text, params).fetchall()
    finally:
        conn.set_progress_handler(None, 1)
    return steps[0], len(rows)


def _plan_problems(conn: sqlite3.Connection, text: str, params: dict[str, Any]) -> list[str]:
    """What in a plan is not a bounded index search: a scan of a table, a sort inside a
    subquery (the top-level sort merges at most a page per (kind, state) pair)."""
    plan = conn.execute("EXPLAIN QUERY PLAN " + text, params).fetchall()
    problems = []
    for _, parent, _, detail in plan:
        if re.match(r"SCAN (runs|events|r|console_sessions)\b", detail):
            problems.append(detail)
        if detail.startswith("SEARCH") and "INDEX" not in detail and "PRIMARY KEY" not in detail:
            problems.append(detail)
        if "TEMP B-TREE" in detail and parent != 0:
            problems.append(detail)
    return problems


def test_every_console_list_is_index_searches_whose_work_does_not_grow(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "big.db", isolation_level=None)
    db.migrate_sync(conn)
    with conn:
        _fill_sqlite(conn, 10_000, 4_000)  # 16,000 runs, 2023-11-15T09:20 to 13:46
    shapes = list(_shapes())
    before = {}
    for page, q in shapes:
        name, params = _query(page, q)
        assert _plan_problems(conn, sql.queries[name], params) == [], (page, q)
        before[page, repr(q)] = _steps(conn, sql.queries[name], params)
    for name, params in OTHERS.items():
        assert _plan_problems(conn, sql.queries[name], params) == [], name
    with conn:  # ten times the rows, older and newer, none failed, on the rare task or topic
        _fill_sqlite(conn, 0, 10_000, fails=0)
        _fill_sqlite(conn, 14_000, 30_000, fails=0)
        conn.execute("DELETE FROM events WHERE topic = 'user/rare/thing' AND id NOT IN "
                     "(SELECT id FROM events WHERE created_at BETWEEN ? AND ?)",
                     (T0 + 40_000, T0 + 56_000))
        conn.execute("UPDATE runs SET task_name = 'Task 1' WHERE task_name = 'Rare' AND "
                     "created_at NOT BETWEEN ? AND ?", (T0 + 40_000, T0 + 56_000))
    grew = {}
    for page, q in shapes:
        name, params = _query(page, q)
        steps, rows = _steps(conn, sql.queries[name], params)
        was_steps, was_rows = before[page, repr(q)]
        # the same page for the same work (the filtered pages were full, or see no new row)
        if steps > was_steps * 1.1 + 500 or rows != was_rows:
            grew[page, repr(q)] = (was_steps, steps, was_rows, rows)
    assert grew == {}


# -- PostgreSQL --------------------------------------------------------------------------------

def _fill_postgres(conn: Any, first: int, events: int) -> None:
    """`_fill_sqlite`'s rows, in PostgreSQL's dialect."""
    conn.execute("""INSERT INTO events (id, topic, data, source, created_at)
        SELECT 'ev-' || lpad(i::text, 8, '0'),
               CASE WHEN i %% 5000 = 0 THEN 'user/rare/thing' ELSE 'user/t' || (i %% 10) || '/go' END,
               '{}', 'webhook', %(t0)s + i * 4
        FROM generate_series(%(first)s::bigint, %(first)s + %(events)s - 1) AS i""",
                 {"first": first, "events": events, "t0": T0})
    conn.execute("""INSERT INTO runs (id, kind, state, priority, run_at, event_id, task_name,
                                      action_type, created_at, attempts)
        SELECT i + 1, CASE i %% 4 WHEN 0 THEN 'event' WHEN 1 THEN 'task' ELSE 'action' END,
               CASE WHEN (i / 4) %% 200 = 7 AND i %% 4 > 0 THEN 'failed' ELSE 'succeeded' END,
               1, %(t0)s, 'ev-' || lpad((i / 4)::text, 8, '0'),
               CASE WHEN i %% 4 = 0 THEN NULL WHEN (i / 4) %% 5000 = 0 THEN 'Rare'
                    ELSE 'Task ' || ((i / 4) %% 20) END,
               CASE WHEN i %% 4 >= 2 THEN 'http' END, %(t0)s + (i / 4) * 4 + (i %% 4) * 0.001, 1
        FROM generate_series(%(first)s::bigint * 4, (%(first)s + %(events)s) * 4 - 1) AS i""",
                 {"first": first, "events": events, "t0": T0})


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _visited(plan: dict[str, Any]) -> tuple[int, list[str]]:
    """Rows the plan's scans of runs and events read (returned or filtered out, every loop),
    and its scans of them that use no index. (The planner may prefer a bitmap scan and a sort
    for a value it knows is rare: the rows visited bound it all the same.)"""
    visited, problems = 0, []
    for node in _nodes(plan):
        if node.get("Relation Name") in ("runs", "events", "console_sessions"):
            if "Index" not in node["Node Type"] and "Bitmap" not in node["Node Type"]:
                problems.append(f"{node['Node Type']} on {node['Relation Name']}")
            visited += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                        + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
    return visited, problems


def _explain(conn: Any, text: str, params: dict[str, Any]) -> dict[str, Any]:
    [row] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + text, params).fetchall()
    plan: dict[str, Any] = row["QUERY PLAN"][0]["Plan"]
    return plan


def test_every_console_list_is_bounded_index_scans_on_postgres(pg_url: str) -> None:
    from runnerd.store import pg

    conn = pg.connect(pg_url)
    try:
        pg.migrate_sync(conn)
        _fill_postgres(conn, 0, 25_000)  # 100,000 runs
        conn.execute("ANALYZE")
        queries = sql.pg_queries()
        for page, q in _shapes():
            name, params = _query(page, q)
            visited, problems = _visited(_explain(conn, queries[name], params))
            pairs = len(json.loads(params.get("kinds", "[0]"))) * len(
                json.loads(params.get("states", "[0]")))
            assert problems == [], (page, q, problems)
            # a page (and one row more) per (kind, state) pair, and the rows at the cursor's time
            assert visited <= pairs * pages.PAGE + 100, (page, q, visited)
        for name, params in OTHERS.items():
            assert _visited(_explain(conn, queries[name], params))[1] == [], name
    finally:
        conn.close()
