"""PostgreSQL (`database: postgresql://…`) on a real throwaway server (tests/helpers_postgres.py):
every named query on both engines, the same tables and columns, and the real daemon end to end."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runnerd import config, errors
from runnerd.queue import retention as queue_retention
from runnerd.store import backends, db, sql

from . import helpers_postgres, test_store
from .conftest import Daemon, create_database, require, wait_until

EVENT = "0b6c1ad0-3c8f-4b0e-9d5e-9e1a3f4c2d10"
T = 1_750_000_000.5

#: A value for every parameter of queries.sql (a query takes the ones it names).
PARAMS: dict[str, Any] = {
    "id": 1, "topic": "user/orders/ready", "data": '{"n": 1}', "source": "webhook",
    "parent_id": None, "webhook_request_id": "req-1", "task_ids": None, "created_at": T,
    "ids": json.dumps([EVENT]), "kind": "task", "state": "due", "priority": 2, "run_at": T,
    "event_id": EVENT, "task_name": "Counter", "action_type": "cache",
    "options": '["incr", "n"]', "meta": "{}", "perform_event": 1, "task_run_id": None,
    "result": None, "attempts": 0, "started_at": None, "finished_at": None, "now": T + 10,
    "action_priority": 3, "task_priority": 2, "event_priority": 1, "limit": 10,
    "event_limit": 10, "from": "started", "error": "boom", "key": "n", "value": '"v"',
    "expires_at": T + 100, "increment": 5, "decrement": 2, "slot_at": T, "fired_at": T,
    "sender": "a@example.test", "recipients": '["b@example.test"]', "subject": "s",
    "message": "m", "run_id": 1, "name": "backup", "status": "failed",
    "monitor": '{"period": 60, "task": false}', "old_state": "new", "new_state": "down",
    "names": '["other"]', "mail_state": "pending", "keep": 5, "duration": 1.5,
    "exit_status": 3, "rid": None, "method": "GET", "remote_addr": "127.0.0.1", "body": "b",
    "body_bytes": 1, "pid": 42, "host": "h", "healthy": True, "active_runs": 0,
    "problem": None, "loop_lag": 0.0, "before": T + 1e6, "after_at": float("-inf"),
    "after_rid": 0, "cutoff_failed": T + 1e6, "page": 10, "batch": 100, "since": T - 10,
    "sent_at": T, "next_at": T + 60, "task": None, "attempt": 1, "until": T + 1e6,
    "per_task": 5, "before_at": T + 1e6, "before_rid": "~", "node": "n1", "lease_until": T + 20,
    "held": 0, "before_id": 1 << 40,
    "kinds": '["event", "task", "action"]', "states": '["due", "succeeded"]',
    "id_hash": "ab" * 32, "csrf": "c", "cap": 3,
    "timeout": "30", "holder": "n1", "ttl": 15.0, "max_attempts": 5,
}
#: Where a query needs another value than PARAMS's.
OVERRIDES: dict[str, dict[str, Any]] = {
    "insert_event": {"id": EVENT}, "event_by_id": {"id": EVENT}, "prune_tree": {"id": EVENT},
    "prune_event": {"id": EVENT}, "worker_beat": {"id": "w1", "started_at": T},
    "worker_stopped": {"id": "w1"},
    "workers_retire": {"id": "w2"}, "workers_prune": {"id": "w2"},
    "workers_retire_node": {"id": "w2"}, "lease_take": {"name": "leader"},
    "finish_run": {"state": "succeeded", "from": "due"}, "status_alerted": {"state": "down"},
    "ping_insert": {"kind": "start"}, "retry_later": {"from": "due"},
    "cache_set": {"value": "40"}, "console_event": {"id": EVENT},
    "console_child_events": {"id": EVENT}, "insert_attempt": {"finished_at": T}, "status_flip": {"old_state": "new", "new_state": "up"},
}
#: the queries whose `rid` column is an engine's own keyset cursor
CURSORS = {"prune_roots", "console_events", "console_events_of_topic", "console_event"}
_NAMES = re.compile(r"(?<![:\w]):([a-z_][a-z_0-9]*)")


def _params(name: str) -> dict[str, Any]:
    wanted = {*_NAMES.findall(sql.queries[name]),  # and those only PostgreSQL's block names
              *re.findall(r"%\(([a-z_0-9]+)\)s", sql.pg_queries()[name])}
    return {k: v for k, v in {**PARAMS, **OVERRIDES.get(name, {})}.items() if k in wanted}


def _normal(name: str, rows: list[db.Row]) -> list[tuple[Any, ...]]:
    """Rows as sorted tuples of (column, value), booleans as SQLite's 0/1; prune_roots' `rid`
    and the console's events' `rid` are opaque keyset cursors (SQLite's rowid, PostgreSQL's
    event id): only their presence counts."""
    out = [tuple((k, "cursor" if k == "rid" and name in CURSORS else int(r[k]) if isinstance(r[k], bool) else r[k])
                 for k in r.keys()) for r in rows]
    return sorted(out, key=repr)


async def _run_all(database: db.Database) -> dict[str, tuple[int, list[tuple[Any, ...]]]]:
    """Every named query in file order, each in its own transaction: {name: (rowcount, rows)}."""
    out = {}
    for name in sql.queries:
        def run(tx: db.Tx, name: str = name) -> tuple[int, list[tuple[Any, ...]]]:
            params = _params(name)
            if re.match(r"\s*(--[^\n]*\n\s*)*(SELECT|WITH)", sql.queries[name]) or (
                    "RETURNING" in sql.queries[name]):
                return -1, _normal(name, tx.all(name, params))
            return tx.execute(name, params).rowcount, []
        out[name] = await database.write(run)
    return out


async def _both(tmp_path: Path, pg_url: str) -> tuple[db.Database, db.Database]:
    lite = await backends.open_database(tmp_path / "lite.db", None).open()
    await lite.migrate()
    pg = await backends.open_database(tmp_path / "unused.db", pg_url).open()
    await pg.migrate()
    return lite, pg


async def test_every_named_query_gives_the_same_answer_on_both_engines(
        tmp_path: Path, pg_url: str) -> None:
    lite, pg = await _both(tmp_path, pg_url)
    try:
        on_sqlite, on_postgres = await _run_all(lite), await _run_all(pg)
    finally:
        await lite.close()
        await pg.close()
    assert on_sqlite.keys() == on_postgres.keys() == sql.queries.keys()
    differ = {name: (on_sqlite[name], on_postgres[name]) for name in sql.queries
              if on_sqlite[name] != on_postgres[name]}
    assert differ == {}
    # the statements did something: most changed or returned rows
    assert sum(1 for n, (count, rows) in on_sqlite.items() if count > 0 or rows) > 40


def _sqlite_columns(path: Path) -> dict[str, list[tuple[str, str, bool]]]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        kinds = {"REAL": "number", "INTEGER": "integer", "TEXT": "text", "": "any"}
        return {name: [(c[1], kinds[c[2]], bool(c[3] or c[5]))
                       for c in conn.execute(f"PRAGMA table_info({name})")] for name in names}
    finally:
        conn.close()


def _postgres_columns(url: str) -> dict[str, list[tuple[str, str, bool]]]:
    import psycopg

    kinds = {"double precision": "number", "integer": "integer", "bigint": "integer",
             "text": "text"}
    out: dict[str, list[tuple[str, str, bool]]] = {}
    with psycopg.connect(url) as conn:
        views = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'")}
        keys = {(r[0], r[1]) for r in conn.execute(
            "SELECT k.table_name, k.column_name FROM information_schema.key_column_usage k "
            "JOIN information_schema.table_constraints c USING (constraint_name) "
            "WHERE c.constraint_type = 'PRIMARY KEY'")}
        for table, column, kind, nullable in conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name <> 'runnerd_schema' ORDER BY table_name, ordinal_position"):
            # a view's columns carry no NOT NULL on either engine; SQLite's expressions have
            # no declared type ("any")
            if table in views:
                kinds_here = "any"
                required = False
            else:
                kinds_here = kinds[kind]
                required = nullable == "NO" or (table, column) in keys
            out.setdefault(table, []).append((column, kinds_here, required))
    return out


async def test_every_table_and_view_has_the_same_columns_on_both_engines(
        tmp_path: Path, pg_url: str) -> None:
    lite, pg = await _both(tmp_path, pg_url)
    await lite.close()
    await pg.close()
    on_sqlite = _sqlite_columns(tmp_path / "lite.db")
    for view in ("pending_runs", "active_runs", "failed_runs", "queue_stats"):  # §9's views
        on_sqlite[view] = [(name, "any", False) for name, _, _ in on_sqlite[view]]
    on_postgres = _postgres_columns(pg_url)
    assert sorted(on_postgres) == sorted(on_sqlite)
    assert on_postgres == on_sqlite


async def test_views_write_times_as_sqlite_does(tmp_path: Path, pg_url: str) -> None:
    lite, pg = await _both(tmp_path, pg_url)
    try:
        for database in (lite, pg):
            await database.write(lambda tx: tx.execute("insert_event", _params("insert_event")))
            await database.write(lambda tx: tx.execute("insert_run", _params("insert_run")))
        import psycopg

        with psycopg.connect(pg_url) as conn:
            on_postgres = conn.execute("SELECT run_at FROM pending_runs").fetchall()
        conn2 = sqlite3.connect(tmp_path / "lite.db")
        on_sqlite = conn2.execute("SELECT run_at FROM pending_runs").fetchall()
        conn2.close()
        assert on_postgres == on_sqlite == [("2025-06-15 15:06:40",)]
    finally:
        await lite.close()
        await pg.close()


async def test_migrations_run_once_even_when_started_together(pg_url: str) -> None:
    databases = [await backends.open_database(Path("unused"), pg_url).open() for _ in range(4)]
    try:
        latest = max(n for n, _, _ in sql.migrations())
        assert await asyncio.gather(*(d.migrate() for d in databases)) == [latest] * 4
        await databases[0].require_migrated()
    finally:
        for d in databases:
            await d.close()


async def test_an_empty_database_is_refused_by_the_commands(pg_url: str) -> None:
    database = await backends.open_database(Path("unused"), pg_url).open(create=False)
    try:
        with pytest.raises(errors.DatabaseError, match="is empty"):
            await database.require_migrated()
    finally:
        await database.close()


def test_a_url_without_psycopg_is_one_config_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runnerd.yaml"
    path.write_text("database: postgresql://runnerd@/runnerd?host=/run/postgresql\n")
    assert config.load(path, {}).database_url == "postgresql://runnerd@/runnerd?host=/run/postgresql"
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path, {})
    assert caught.value.problems == [
        "database: a PostgreSQL URL needs psycopg: install runnerd[postgres] "
        "(pip install 'runnerd[postgres]')"]


# -- the daemon on PostgreSQL -----------------------------------------------------------------

class PgDaemon(Daemon):
    """`Daemon` on the PostgreSQL database `url`, whatever the engine switch says."""

    def __init__(self, tmp: Path, body: str, url: str) -> None:
        self.pg_url: str | None = url
        super().__init__(tmp, body)


PIPELINE = """
email: {transport: outbox, from: runnerd@example.test}
webhooks:
  - {name: orders, topic: user/orders/ready}
tasks:
  - name: Counter
    subscriptions: user/orders/ready
    code: |
      {% action "cache", "incr", "orders" %}
      {% action "email", to: "ops@example.test", subject: "order", body: "order received" %}
"""


@pytest.fixture
def pg_daemon(make_daemon: Any, pg_url: str) -> Any:
    """`make_daemon` of `PgDaemon`s on a fresh PostgreSQL database."""
    return lambda body: make_daemon(body, PgDaemon, url=pg_url)


def test_webhook_to_task_to_cache_and_email_on_postgres(pg_daemon: Any) -> None:
    d: PgDaemon = pg_daemon(PIPELINE).start()
    status, headers, _ = d.post_json("/webhooks/orders", {"id": 7})
    assert status == 204
    [event] = d.query("SELECT * FROM events WHERE webhook_request_id = ?",
                      (headers["X-Request-Id"],))
    assert json.loads(event["data"]) == {"id": 7}
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 2)
    states = d.query("SELECT kind, state, attempts FROM runs ORDER BY id")
    assert [tuple(r) for r in states] == [
        ("event", "succeeded", 1), ("task", "succeeded", 1), ("action", "succeeded", 1),
        ("action", "succeeded", 1)]
    [mail] = d.query("SELECT recipients, subject, message FROM outbox")
    assert json.loads(mail["recipients"]) == ["ops@example.test"] and mail["subject"] == "order"
    assert d.cli("cache", "get", "orders").stdout.strip() == "1"
    listing = json.loads(d.cli("runs", "--json", "--kind", "action").stdout)
    assert sorted(r["action_type"] for r in listing) == ["cache", "email"]
    queue = json.loads(d.cli("queue", "--json").stdout)
    assert queue["queue"] == {} or all(
        n == 0 for states in queue["queue"].values() for n in states.values())
    for command in (["workers"], ["status"], ["monitors"], ["prune"]):  # every command reads it
        done = d.cli(*command)
        assert done.returncode == 0 and done.stderr.count("\n") <= 1, (command, done.stderr)
    assert d.cli("send", "user/orders/ready", "--data", '{"id": 8}').returncode == 0
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 4)
    assert d.cli("check").stdout.endswith(
        f"database {d.pg_url}\n")  # no password in it: shown as written
    assert d.stop() == 0
    assert d.query("SELECT COUNT(*) AS n FROM runs WHERE state = 'started'")[0]["n"] == 0


def test_kill_9_after_204_loses_nothing_on_postgres(pg_daemon: Any) -> None:
    d: PgDaemon = pg_daemon(PIPELINE).start()
    accepted = []
    for i in range(30):
        status, headers, _ = d.post_json("/webhooks/orders", {"id": i})
        assert status == 204
        accepted.append(headers["X-Request-Id"])
    d.kill()  # SIGKILL right after the last 204
    stored = {r["webhook_request_id"] for r in d.query(
        "SELECT webhook_request_id FROM events WHERE webhook_request_id IS NOT NULL")}
    assert stored == set(accepted)
    d.start()
    d.wait_runs("kind = 'event' AND state = 'succeeded'", 30)
    d.wait_runs("kind = 'action' AND action_type = 'cache' AND state = 'succeeded'", 30)
    assert d.query("SELECT COUNT(*) AS n FROM runs WHERE kind = 'event'")[0]["n"] == 30
    assert int(d.cli("cache", "get", "orders").stdout) >= 30  # at-least-once actions
    assert d.stop() == 0
    assert d.query("SELECT COUNT(*) AS n FROM runs WHERE state = 'started'")[0]["n"] == 0


def test_a_second_daemon_on_the_same_database_exits_1(pg_daemon: Any) -> None:
    d: PgDaemon = pg_daemon(PIPELINE).start()
    second = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(d.config)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1
    assert f"already running on {d.pg_url}" in second.stderr
    assert f"pid {d.proc.pid}" in second.stderr  # type: ignore[union-attr]
    assert d.stop() == 0


def test_backup_on_a_url_is_a_pg_dump_archive_that_restores(
        pg_daemon: Any, postgres_server: Any, tmp_path: Path) -> None:
    d: PgDaemon = pg_daemon(PIPELINE).start()
    assert d.post_json("/webhooks/orders", {"id": 1})[0] == 204
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 2)
    archive = tmp_path / "runnerd.dump"
    out = d.cli("backup", str(archive), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bytes"] == archive.stat().st_size > 0
    assert archive.stat().st_mode & 0o777 == 0o600
    again = d.cli("backup", str(archive))  # never overwritten
    assert again.returncode != 0 and again.stderr.count("\n") == 1 and "exists" in again.stderr
    assert d.stop() == 0
    restored = postgres_server.new_database()
    subprocess.run(["pg_restore", "--no-owner", f"--dbname={restored}", str(archive)],
                   check=True, capture_output=True, timeout=60)
    d.pg_url = restored
    assert d.query("SELECT COUNT(*) AS n FROM runs WHERE state = 'succeeded'")[0]["n"] == 4
    assert d.query("SELECT value FROM cache WHERE key = 'orders'")[0]["value"] == "1"


def test_backup_without_pg_dump_is_one_line(pg_daemon: Any, tmp_path: Path) -> None:
    d: PgDaemon = pg_daemon(PIPELINE)
    d.env["PATH"] = str(tmp_path / "no-such-dir")
    out = d.cli("backup", str(tmp_path / "runnerd.dump"))
    assert out.returncode != 0 and out.stderr.count("\n") == 1
    assert "pg_dump is not installed" in out.stderr and not (tmp_path / "runnerd.dump").exists()


def test_sqlite_databases_are_unchanged(tmp_path: Path) -> None:
    """A path still means SQLite: the daemon's own file, no URL, no psycopg imported."""
    path = tmp_path / "runnerd.yaml"
    path.write_text("database: runnerd.db\n")
    settings = config.load(path, {})
    assert settings.database == tmp_path / "runnerd.db" and settings.database_url is None
    create_database(settings.database)
    probe = subprocess.run(
        [sys.executable, "-c", "import asyncio, sys; from runnerd.store import backends; "
         f"d = asyncio.run(backends.open_database(__import__('pathlib').Path({str(settings.database)!r}),"
         " None).open()); print('psycopg' in sys.modules)"],
        capture_output=True, text=True, timeout=30, check=True)
    assert probe.stdout.strip() == "False"


async def test_counter_errors_and_expiry_on_postgres(pg_url: str) -> None:
    """The cache counters' edges (not an integer, 64-bit overflow, expiry) as on SQLite: the
    same test, on a PostgreSQL database (cache_add's PostgreSQL block)."""
    database = await backends.open_database(Path("unused"), pg_url).open()
    try:
        await database.migrate()
        await test_store.test_counter_errors_and_expiry(database)
    finally:
        await database.close()


async def test_retention_pages_through_trees_alike_on_both_engines(
        tmp_path: Path, pg_url: str) -> None:
    """prune_roots' keyset cursor (rowid on SQLite, the event id on PostgreSQL) pages through
    more roots than a page holds; a failed tree and an unfinished one stay, on both engines."""
    lite, pg = await _both(tmp_path, pg_url)
    path = tmp_path / "runnerd.yaml"
    path.write_text("database: unused.db\nretention_days: 1\nretention_days_failed: 90\n")
    settings = config.load(path, {})

    def seed(tx: db.Tx) -> None:
        for i in range(1205):  # more than two pages of 500 roots, more than one batch
            event = f"{i:08d}-0000-4000-8000-000000000000"
            state = "failed" if i % 100 == 7 else "due" if i % 100 == 8 else "succeeded"
            tx.execute("insert_event", {**_params("insert_event"), "id": event,
                                        "created_at": T + i % 3})
            tx.execute("insert_run", {**_params("insert_run"), "event_id": event,
                                      "state": state, "finished_at": T + 1})
            if i % 10 == 0:  # a child event: the tree goes whole
                tx.execute("insert_event", {**_params("insert_event"), "id": f"c{event}",
                                            "parent_id": event, "created_at": T + 2})

    try:
        outcomes = []
        for database in (lite, pg):
            await database.write(seed)
            out = await queue_retention.prune(database, settings, T + 2 * 86400, batch=400)
            left = await database.read(lambda tx: tx.all("list_runs", {
                "state": None, "kind": None, "task": None, "limit": 100}))
            outcomes.append((out["events_pruned"], sorted(r["state"] for r in left)))
        assert outcomes[0] == outcomes[1]
        assert outcomes[1] == (1205 + 121 - 24, ["due"] * 12 + ["failed"] * 12)
    finally:
        await lite.close()
        await pg.close()



@pytest.fixture
def silent_server() -> Any:
    """A TCP port on 127.0.0.1 that takes connections (the kernel completes the handshake) but
    never answers a byte: a blackholed PostgreSQL server."""
    import socket

    with socket.create_server(("127.0.0.1", 0), backlog=16) as listening:
        yield listening.getsockname()[1]


def test_a_connection_gets_runnerds_connect_timeout_unless_the_url_sets_one(
        pg_url: str) -> None:
    from runnerd.store import pg

    with pg.connect(pg_url) as conn:
        assert conn.info.get_parameters()["connect_timeout"] == str(pg.CONNECT_TIMEOUT)
    with pg.connect(pg_url + "&connect_timeout=3") as conn:
        assert conn.info.get_parameters()["connect_timeout"] == "3"


def test_a_server_that_never_answers_is_given_up_on(silent_server: int,
                                                    tmp_path: Path) -> None:
    """Without a URL's connect_timeout, runnerd's (psycopg alone waits 130 s, libpq forever:
    longer than this test may run); with one, the URL's, and `runnerd run` exits 1 with one
    line."""
    import psycopg

    from runnerd.store import pg

    with pytest.raises(psycopg.OperationalError, match="timeout"):
        pg.connect(f"postgresql://runnerd@127.0.0.1:{silent_server}/runnerd")
    url = f"postgresql://runnerd@127.0.0.1:{silent_server}/runnerd?connect_timeout=2"
    path = tmp_path / "runnerd.yaml"
    path.write_text(f"database: {url}\n")
    done = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot open database {url}: " in done.stderr and "timeout" in done.stderr
