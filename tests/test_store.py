"""The storage seam on real SQLite files: atomic cache counters, a stale finish applied once."""

from __future__ import annotations

import ast
import asyncio
import difflib
import re
import sqlite3
import threading
from pathlib import Path

from runnerd.actions import cache as cache_action
from runnerd.models import RunKind, RunState
from runnerd.queue import runs
from runnerd.store import cache, db, sql

NOW = 1_750_000_000.0
TTL = cache.MAX_TTL


def incr(tx: db.Tx, key: str = "n") -> object:
    return cache_action.apply(tx, "incr", {"key": key, "ttl": TTL}, NOW)


async def started_action_run(database: db.Database) -> runs.Job:
    """A cache action run, claimed (`started`) as the worker would."""
    event = runs.new_event("user/a/b", None, "cli", NOW)

    def add(tx: db.Tx) -> list[runs.Job]:
        runs.insert_events(tx, [event], NOW)
        tx.execute("insert_run", runs.run_row(RunKind.ACTION, event.id, NOW, task_name="T",
                                               action_type="cache", options=["incr", "n"]))
        return runs.claim(tx, 10, NOW)

    jobs = await database.write(add)
    return next(j for j in jobs if j.run.kind is RunKind.ACTION)


async def test_a_stale_finish_does_not_apply_a_cache_action_twice(
        database: db.Database) -> None:
    job = await started_action_run(database)
    outcome = runs.Outcome(job.run, ok=True, deferred=incr, finished_at=NOW)
    first = await database.write(lambda tx: runs.finish(tx, outcome, NOW))
    assert first is not None and first.state is RunState.SUCCEEDED and first.result == 1
    # The same outcome again (a late finish: the run is no longer `started`) changes nothing.
    assert await database.write(lambda tx: runs.finish(tx, outcome, NOW)) is None
    assert await database.read(lambda tx: cache.get(tx, "n", NOW)) == 1
    run = await database.read(lambda tx: runs.get(tx, job.run.id))
    assert run.state is RunState.SUCCEEDED and run.result == 1


async def test_a_stale_finish_does_not_store_an_event_action_twice(
        database: db.Database) -> None:
    job = await started_action_run(database)

    def emit(tx: db.Tx) -> object:
        runs.insert_events(tx, [runs.new_event("user/x/y", None, "runnerd", NOW)], NOW)
        return None

    outcome = runs.Outcome(job.run, ok=True, deferred=emit, finished_at=NOW)
    assert await database.write(lambda tx: runs.finish(tx, outcome, NOW)) is not None
    assert await database.write(lambda tx: runs.finish(tx, outcome, NOW)) is None
    topics = await database.read(lambda tx: [r["topic"] for r in tx.conn.execute(
        "SELECT topic FROM events WHERE topic = 'user/x/y'")])
    assert topics == ["user/x/y"]


async def test_a_counter_is_one_statement(database: db.Database) -> None:
    """incr/incrby/decr/decrby read and write the counter in one statement (no window in which
    another writer's increment could be lost, on any database)."""
    statements: list[str] = []

    def traced(tx: db.Tx) -> list[object]:
        tx.conn.set_trace_callback(statements.append)
        try:
            return [cache_action.apply(tx, command, {"key": "n", "ttl": TTL, **args}, NOW)
                    for command, args in [("incr", {}), ("incrby", {"increment": 5}),
                                          ("decr", {}), ("decrby", {"decrement": 2})]]
        finally:
            tx.conn.set_trace_callback(None)

    assert await database.write(traced) == [1, 6, 5, 3]
    touching = [s for s in statements if "cache" in s]
    assert len(touching) == 4, touching


async def test_counter_errors_and_expiry(database: db.Database) -> None:
    async def apply(command: str, **args: object) -> object:
        return await database.write(lambda tx: cache_action.apply(
            tx, command, {"key": "n", "ttl": TTL, **args}, NOW))

    async def fails(command: str, **args: object) -> str:
        try:
            await apply(command, **args)
        except Exception as exc:  # noqa: BLE001 - the message is the point
            return str(exc)
        raise AssertionError("no error")

    for value in (True, 1.0, "5", [1], {"a": 1}):
        await apply("set", value=value)
        assert await fails("incr") == "cache: incr on 'n', which is not an integer"
        assert await database.read(lambda tx: cache.get(tx, "n", NOW)) == value
    await apply("set", value=2**63 - 1)
    assert await fails("incr") == ("cache: incr on 'n' would overflow a 64-bit integer; "
                                   "the value is unchanged")
    await apply("set", value=-1)
    assert await apply("decrby", decrement=-(2**63)) == 2**63 - 1
    await apply("set", value=-(2**63))
    assert await fails("decr") == ("cache: decr on 'n' would overflow a 64-bit integer; "
                                   "the value is unchanged")
    await apply("set", value=2**70)
    assert await fails("incrby", increment=1) == (
        f"cache: incrby on 'n', whose value {2**70} is beyond a 64-bit integer")
    # An expired counter counts from 0, like an absent one, and every command resets the TTL.
    await database.write(lambda tx: cache.put(tx, "n", 41, 1, NOW - 10))
    assert await apply("incrby", increment=2) == 2
    assert await database.read(lambda tx: cache.get(tx, "n", NOW + TTL - 1)) == 2
    assert await fails("decrby", decrement=-(2**63)) == (
        "cache: decrby on 'n' would overflow a 64-bit integer; the value is unchanged")


def test_concurrent_increments_through_separate_connections_lose_nothing(
        tmp_path: Path) -> None:
    """Four threads, each with its own Database (its own SQLite connections) on one file, add
    to one counter through the cache action's code path: every increment counts."""
    path = tmp_path / "race.db"
    threads, per_thread = 4, 150

    async def migrate() -> None:
        database = await db.Database(path).open()
        await database.migrate()
        await database.close()

    asyncio.run(migrate())
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    async def count() -> None:
        database = await db.Database(path).open()
        try:
            barrier.wait(timeout=30)
            for _ in range(per_thread):
                await database.write(incr)
        finally:
            await database.close()

    def worker() -> None:
        try:
            asyncio.run(count())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not failures, failures

    async def total() -> object:
        database = await db.Database(path).open(create=False)
        try:
            return await database.read(lambda tx: cache.get(tx, "n", NOW))
        finally:
            await database.close()

    assert asyncio.run(total()) == threads * per_thread


async def test_transactions_run_on_runnerds_own_named_threads(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    database = await db.Database(tmp_path / "t.db").open()
    try:
        await database.migrate()
        assert await database.write(lambda tx: threading.current_thread().name) \
            == "runnerd-db-writer"
        assert await database.read(lambda tx: threading.current_thread().name) \
            == "runnerd-db-reader"
        # One transaction at a time per thread, many writers' functions in one group commit.
        names = await asyncio.gather(*[database.write(
            lambda tx: (threading.current_thread().name, tx.conn.in_transaction))
            for _ in range(20)])
        assert set(names) == {("runnerd-db-writer", True)}
    finally:
        await database.close()
    # closing ends both threads
    assert [t.name for t in set(threading.enumerate()) - before
            if t.name.startswith("runnerd-db-")] == []


_SQL = re.compile(r"\b(SELECT\b.*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                  r"CREATE\s+(TABLE|INDEX|VIEW)|PRAGMA)\b", re.IGNORECASE | re.DOTALL)


def _strings(tree: ast.AST) -> list[str]:
    """The string literals of a module, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if (node.body and isinstance(node.body[0], ast.Expr)
                    and isinstance(node.body[0].value, ast.Constant)):
                docstrings.add(id(node.body[0].value))
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_the_store_touches_sqlite_or_holds_sql() -> None:
    """The seam: outside runnerd/store nothing imports sqlite3 or aiosqlite, touches a
    connection, reads sql.queries directly or holds SQL text; every statement is a named query
    run through the store."""
    package = Path(db.__file__).parents[1]
    offenders = []
    for file in sorted(package.rglob("*.py")):
        if (package / "store") in file.parents:
            continue
        text = file.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{file}: imports {m}" for m in modules
                          if m.split(".")[0] in ("sqlite3", "aiosqlite")]
            if isinstance(node, ast.Attribute) and node.attr == "conn":
                offenders.append(f"{file}:{node.lineno}: uses a connection (.conn)")
        if "sql.queries" in text:
            offenders.append(f"{file}: reads sql.queries")
        offenders += [f"{file}: SQL {s[:60]!r}" for s in _strings(tree) if _SQL.search(s)]
    assert offenders == []


def test_aiosqlite_is_not_a_dependency() -> None:
    pyproject = (Path(db.__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    assert "aiosqlite" not in pyproject


def _normal(text: str) -> str:
    """SQL without comments, quotes around names or layout: two spellings of one object match."""
    text = re.sub(r"--[^\n]*", " ", text).replace('"', "")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s*([(),;])\s*", r"\1", text)


def _describe(conn: sqlite3.Connection) -> list[str]:
    """Every table (with its columns), index, view and trigger, one line each, sorted."""
    lines = []
    for kind, name, text in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%'"):
        lines.append(f"{kind} {name}: {_normal(text)}")
        if kind == "table":
            lines += [f"column {name}.{c[1]} {c[2]} notnull={c[3]} default={c[4]} pk={c[5]}"
                      for c in conn.execute(f"PRAGMA table_xinfo({name})")]
        if kind == "index":
            lines += [f"index {name} key {c[2]} desc={c[3]}"
                      for c in conn.execute(f"PRAGMA index_xinfo({name})") if c[5]]
    return sorted(lines)


def test_schema_sql_is_what_the_migrations_produce() -> None:
    migrated = sqlite3.connect(":memory:", isolation_level=None)
    latest = db.migrate_sync(migrated)
    snapshot = sqlite3.connect(":memory:", isolation_level=None)
    text = (Path(sql.__file__).parent / "schema.sql").read_text(encoding="utf-8")
    snapshot.executescript(text)
    diff = list(difflib.unified_diff(_describe(snapshot), _describe(migrated), "schema.sql",
                                     "migrations", lineterm="", n=0))
    assert not diff, "schema.sql differs from the migrated schema:\n" + "\n".join(diff)
    assert f"migrations/0001 to {latest:04d}" in text, "schema.sql names another last migration"


def test_every_named_query_is_described_and_priorities_are_named() -> None:
    text = (Path(sql.__file__).parent / "queries.sql").read_text(encoding="utf-8")
    blocks = re.findall(r"^-- name: (\w+)\n(.*?)(?=^-- name: |\Z)", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == len(sql.queries), "a query name is used twice"
    undescribed = [name for name, body in blocks if not body.startswith("-- ")]
    assert undescribed == []
    assert not re.search(r"priority\s*(=|IN|<|>)\s*\(?\s*\d", text), "a priority as a literal"
