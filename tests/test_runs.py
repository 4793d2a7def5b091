"""The run queue on a real SQLite file: states, priorities, FIFO, retries and their timing
(the claim order on PostgreSQL too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runnerd import errors, models
from runnerd.models import RunKind, RunState
from runnerd.queue import retention, runs
from runnerd.store import backends, db, sql


async def add_event(database: db.Database, now: float, **kw: object) -> models.Event:
    event = runs.new_event("user/a/b", {"x": 1}, "cli", now, **kw)  # type: ignore[arg-type]
    await database.write(lambda tx: runs.insert_events(tx, [event], now))
    return event


async def add_runs(database: db.Database, rows: list[dict[str, object]]) -> None:
    await database.write(lambda tx: tx.executemany("insert_run", rows))


def test_every_query_name_used_exists() -> None:
    import pathlib
    import re

    names = set()
    for file in pathlib.Path(runs.__file__).parent.rglob("*.py"):
        text = file.read_text()
        names |= set(re.findall(r'tx\.(?:execute|executemany|all|one)\(\s*"([a-z_0-9]+)"', text))
        names |= set(re.findall(r'queries\["([a-z_0-9]+)"\]', text))
    assert names, "found no query names"
    assert names <= set(sql.queries), names - set(sql.queries)


async def test_event_gets_a_due_event_run(database: db.Database, clock) -> None:
    event = await add_event(database, clock())
    jobs = await database.write(lambda tx: runs.claim(tx, 10, clock(), event_runs=True))
    assert [(j.run.kind, j.run.state, j.run.attempts) for j in jobs] == [
        (RunKind.EVENT, RunState.STARTED, 1)]
    assert jobs[0].event == event


@pytest.fixture(params=["sqlite", "postgres"])
async def any_database(request: pytest.FixtureRequest,
                       tmp_path: Path) -> AsyncIterator[db.Database]:
    """A migrated database on each engine (PostgreSQL's claim is its own statement)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    database = await backends.open_database(tmp_path / "test.db", url).open()
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


async def test_claim_order_is_action_then_event_then_fifo(any_database: db.Database,
                                                          clock) -> None:
    database = any_database
    now = clock()
    event = await add_event(database, now)
    rows = [runs.run_row(RunKind.TASK, event.id, now + i, task_name=f"t{i}") for i in range(2)]
    rows += [runs.run_row(RunKind.ACTION, event.id, now + i, task_name="t", action_type="echo",
                          options={"n": i}) for i in range(2)]
    await add_runs(database, rows)
    clock.advance(10)
    jobs = await database.write(lambda tx: runs.claim(tx, 10, clock(), event_runs=True))
    order = [(j.run.kind.value, j.run.task_name, j.run.options) for j in jobs]
    # Task runs take no slot: they are never claimed, but rendered between turns (FIFO).
    assert order == [("action", "t", {"n": 0}), ("action", "t", {"n": 1}),
                     ("event", None, None)]
    tasks = await database.write(lambda tx: runs.due_task_runs(tx, 10, 0.0))
    assert [(j.run.task_name, j.run.state, j.run.attempts) for j in tasks] == [
        ("t0", RunState.DUE, 0), ("t1", RunState.DUE, 0)]


async def test_a_short_claim_takes_the_oldest_runs_of_the_highest_priority(
        any_database: db.Database, clock) -> None:
    """SPEC §14: priorities and FIFO hold within a node's claims (its limit cuts the rest)."""
    now = clock()
    event = await add_event(any_database, now)  # its event run: due, a lower priority
    await add_runs(any_database, [
        runs.run_row(RunKind.ACTION, event.id, now + i, task_name="t", action_type="echo",
                     options={"n": i}) for i in (2, 0, 1)])
    clock.advance(10)
    jobs = await any_database.write(lambda tx: runs.claim(tx, 2, clock(), event_runs=True))
    assert [j.run.options for j in jobs] == [{"n": 0}, {"n": 1}]


async def test_due_task_runs_are_left_due_and_never_take_a_claim(database: db.Database,
                                                                 clock) -> None:
    now = clock()
    event = await add_event(database, now)
    await add_runs(database, [runs.run_row(RunKind.TASK, event.id, now, task_name=f"t{i}")
                              for i in range(50)])
    # A backlog of task runs does not stand between a free slot and the event run behind it.
    (job,) = await database.write(lambda tx: runs.claim(tx, 1, now, event_runs=True))
    assert job.run.kind is RunKind.EVENT
    first = await database.write(lambda tx: runs.due_task_runs(tx, 3, 0.0))
    again = await database.write(lambda tx: runs.due_task_runs(tx, 3, 0.0))
    assert [j.run.id for j in first] == [j.run.id for j in again]  # nothing was changed
    run = runs.begin(first[0], now + 1).run
    assert (run.state, run.attempts, run.started_at) == (RunState.DUE, 1, now + 1)
    final = await database.write(lambda tx: runs.finish(
        tx, _outcome(run, ok=True, finished_at=now + 2), now + 2))
    assert final is not None and final.state is RunState.SUCCEEDED
    stored = await database.read(lambda tx: runs.get(tx, run.id))
    assert (stored.state, stored.attempts, stored.started_at, stored.finished_at) == (
        RunState.SUCCEEDED, 1, now + 1, now + 2)
    # Cancelled while it was being rendered: the outcome is dropped, the cancel stands.
    other = runs.begin(first[1], now).run
    await database.write(lambda tx: runs.cancel(tx, other.id, now))
    assert await database.write(lambda tx: runs.finish(
        tx, _outcome(other, ok=True), now)) is None
    assert (await database.read(lambda tx: runs.get(tx, other.id))).error == "cancelled"


async def test_claim_respects_limit(database: db.Database, clock) -> None:
    for _ in range(5):
        await add_event(database, clock())
    first = await database.write(lambda tx: runs.claim(tx, 2, clock(), event_runs=True))
    second = await database.write(lambda tx: runs.claim(tx, 10, clock(), event_runs=True))
    assert len(first) == 2 and len(second) == 3
    assert {j.run.id for j in first}.isdisjoint({j.run.id for j in second})


async def test_scheduled_run_becomes_due_at_run_at(database: db.Database, clock) -> None:
    now = clock()
    await add_event(database, now, run_at=now + 60)
    assert await database.write(lambda tx: runs.claim(tx, 10, now, event_runs=True)) == []
    row = await database.read(lambda tx: tx.all("list_runs", {
        "state": None, "kind": None, "task": None, "limit": 5}))
    assert row[0]["state"] == "scheduled"
    jobs = await database.write(lambda tx: runs.claim(tx, 10, now + 60, event_runs=True))
    assert len(jobs) == 1


async def test_task_job_carries_parent_chain(database: db.Database, clock) -> None:
    now = clock()
    e1 = await add_event(database, now)
    e2 = await add_event(database, now, parent_id=e1.id)
    await add_runs(database, [runs.run_row(RunKind.TASK, e2.id, now, task_name="t")])
    (task_job,) = await database.write(lambda tx: runs.due_task_runs(tx, 10, 0.0))
    assert task_job.parent is not None and task_job.parent["id"] == e1.id
    assert task_job.parent["parent"] is None


async def test_parent_chains_of_a_batch_stop_at_five_generations(database: db.Database,
                                                                  clock) -> None:
    now = clock()
    chain = [await add_event(database, now)]
    for _ in range(7):
        chain.append(await add_event(database, now, parent_id=chain[-1].id))
    # Two task runs in one claim, on events of the same chain (shared ancestors).
    await add_runs(database, [runs.run_row(RunKind.TASK, chain[7].id, now, task_name="a"),
                              runs.run_row(RunKind.TASK, chain[2].id, now, task_name="b")])
    jobs = {j.run.task_name: j for j in await database.write(
        lambda tx: runs.due_task_runs(tx, 10, 0.0))}

    def ids(parent: dict | None) -> list[str]:
        out = []
        while parent is not None:
            out.append(parent["id"])
            parent = parent["parent"]
        return out

    assert ids(jobs["a"].parent) == [e.id for e in reversed(chain[2:7])]  # 5 generations
    assert ids(jobs["b"].parent) == [chain[1].id, chain[0].id]
    assert jobs["a"].event.id == chain[7].id and jobs["b"].event.id == chain[2].id


def _outcome(run: models.Run, **kw: object) -> runs.Outcome:
    return runs.Outcome(run, **kw)  # type: ignore[arg-type]


async def test_transient_failures_retry_four_times_at_documented_delays(
        database: db.Database, clock) -> None:
    await add_event(database, clock())
    expected = [30, 76, 152, 308]
    for attempt in range(1, 6):
        jobs = await database.write(lambda tx: runs.claim(tx, 1, clock(), event_runs=True))
        assert len(jobs) == 1 and jobs[0].run.attempts == attempt
        run = jobs[0].run
        final = await database.write(lambda tx: runs.finish(
            tx, _outcome(run, ok=False, error="boom", retryable=True, finished_at=clock()),
            clock(), rand=lambda: 0.5))
        assert final is not None
        if attempt <= 4:
            assert final.state is RunState.SCHEDULED
            assert final.run_at == pytest.approx(clock() + expected[attempt - 1])
            # not due a second early, due exactly at run_at
            assert await database.write(lambda tx: runs.claim(
                tx, 1, final.run_at - 1, event_runs=True)) == []
            clock.now = final.run_at
        else:
            assert final.state is RunState.FAILED
    attempts = await database.read(lambda tx: runs.attempts(tx, run.id))
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]


def test_backoff_jitter_stays_within_ten_percent() -> None:
    assert runs.backoff(1, lambda: 0.0) == pytest.approx(27.0)
    assert runs.backoff(1, lambda: 1.0) == pytest.approx(33.0)
    assert runs.backoff(4, lambda: 0.5) == pytest.approx(308.0)


async def test_permanent_failure_fails_at_once(database: db.Database, clock) -> None:
    await add_event(database, clock())
    jobs = await database.write(lambda tx: runs.claim(tx, 1, clock(), event_runs=True))
    final = await database.write(lambda tx: runs.finish(
        tx, _outcome(jobs[0].run, ok=False, error="bad", retryable=False), clock()))
    assert final is not None and final.state is RunState.FAILED and final.attempts == 1


async def test_deferred_failure_rolls_back_its_writes(database: db.Database, clock) -> None:
    await add_event(database, clock())
    jobs = await database.write(lambda tx: runs.claim(tx, 1, clock(), event_runs=True))

    def deferred(tx: db.Tx) -> None:
        tx.execute("cache_set", {"key": "k", "value": "1", "expires_at": clock() + 60})
        raise errors.InvalidAction("nope")

    final = await database.write(lambda tx: runs.finish(
        tx, _outcome(jobs[0].run, ok=True, deferred=deferred), clock()))
    assert final is not None and final.state is RunState.FAILED and final.error == "nope"
    assert await database.read(lambda tx: tx.one("cache_get", {"key": "k", "now": 0})) is None


async def test_manual_retry_and_cancel(database: db.Database, clock) -> None:
    now = clock()
    event = await add_event(database, now)
    await add_runs(database, [runs.run_row(RunKind.TASK, event.id, now, task_name="t"),
                              runs.run_row(RunKind.TASK, event.id, now + 100, task_name="u")])
    task = runs.begin((await database.write(lambda tx: runs.due_task_runs(tx, 1, 0.0)))[0], now).run
    with pytest.raises(errors.InvalidInput, match="only failed runs"):
        await database.write(lambda tx: runs.retry(tx, task.id, now))
    await database.write(lambda tx: runs.finish(tx, _outcome(task, ok=False, error="x"), now))
    again = await database.write(lambda tx: runs.retry(tx, task.id, now + 1))
    assert again.state is RunState.DUE and again.error is None
    scheduled = (await database.read(lambda tx: runs.select(tx, task="u")))[0]
    cancelled = await database.write(lambda tx: runs.cancel(tx, scheduled.id, now))
    assert cancelled.state is RunState.FAILED and cancelled.error == "cancelled"
    with pytest.raises(errors.InvalidInput, match="can be cancelled"):
        await database.write(lambda tx: runs.cancel(tx, scheduled.id, now))
    with pytest.raises(errors.NotFound):
        await database.write(lambda tx: runs.retry(tx, 999_999, now))


async def test_requeue_started_counts_the_attempt(database: db.Database, clock) -> None:
    await add_event(database, clock())
    await database.write(lambda tx: runs.claim(tx, 1, clock(), event_runs=True))
    assert await database.write(lambda tx: runs.requeued(tx, "requeue_started", {}, clock())) == 1
    jobs = await database.write(lambda tx: runs.claim(tx, 1, clock(), event_runs=True))
    assert jobs[0].run.attempts == 2
    # The interrupted attempt is kept in run_attempts, as a retried failure's is.
    [kept] = await database.read(lambda tx: runs.attempts(tx, jobs[0].run.id))
    assert (kept["attempt"], kept["error"]) == (1, runs.INTERRUPTED)
    assert kept["finished_at"] == models.iso(clock())


async def test_finish_of_a_run_no_longer_started_is_ignored(database: db.Database, clock) -> None:
    await add_event(database, clock())
    jobs = await database.write(lambda tx: runs.claim(tx, 1, clock(), event_runs=True))
    await database.write(lambda tx: runs.requeued(tx, "requeue_started", {}, clock()))
    assert await database.write(lambda tx: runs.finish(
        tx, _outcome(jobs[0].run, ok=True), clock())) is None


async def test_prune_keeps_recent_and_failed_longer(database: db.Database, clock) -> None:
    now = clock()
    ok_event = await add_event(database, now)
    bad_event = await add_event(database, now)
    jobs = await database.write(lambda tx: runs.claim(tx, 10, now, event_runs=True))
    for job in jobs:
        ok = job.event.id == ok_event.id
        await database.write(lambda tx, j=job, ok=ok: runs.finish(
            tx, _outcome(j.run, ok=ok, error=None if ok else "x"), now))
    assert await database.write(lambda tx: retention.prune_batch(
        tx, now + 14 * 86400, days=15, days_failed=90)) == 0
    assert await database.write(lambda tx: retention.prune_batch(
        tx, now + 16 * 86400, days=15, days_failed=90)) == 1
    left = await database.read(lambda tx: tx.one("event_by_id", {"id": bad_event.id}))
    assert left is not None
    assert await database.write(lambda tx: retention.prune_batch(
        tx, now + 91 * 86400, days=15, days_failed=90)) == 1


async def test_stats(database: db.Database, clock) -> None:
    await add_event(database, clock())
    clock.advance(5)
    out = await database.read(lambda tx: runs.stats(tx, clock()))
    assert out["queue"]["event"] == {"due": 1}
    assert out["lag_seconds"] == pytest.approx(5.0)
    assert out["top_waiting_topics"] == [{"name": "user/a/b", "runs": 1}]


async def test_schema_has_the_spec_columns(database: db.Database) -> None:
    def columns(tx: db.Tx, table: str) -> set[str]:
        return {r[1] for r in tx.conn.execute(f"PRAGMA table_info({table})")}

    spec = {
        "events": {"id", "topic", "data", "source", "parent_id", "webhook_request_id",
                   "created_at"},
        "runs": {"id", "kind", "state", "priority", "run_at", "event_id", "task_name",
                 "action_type", "options", "result", "error", "attempts", "created_at",
                 "started_at", "finished_at"},
        "cache": {"key", "value", "expires_at"},
        "outbox": {"id", "created_at", "sender", "recipients", "subject", "message"},
    }
    for table, cols in spec.items():
        assert cols <= await database.read(lambda tx, t=table: columns(tx, t)), table
    views = await database.read(lambda tx: {r[0] for r in tx.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'view'")})
    assert {"pending_runs", "active_runs", "failed_runs", "queue_stats"} <= views
    mode = await database.read(lambda tx: tx.conn.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"


async def test_migrations_are_idempotent(database: db.Database) -> None:
    version = await database.migrate()
    assert version == max(n for n, _, _ in sql.migrations())


def test_new_id_is_a_time_ordered_version_7_uuid() -> None:
    import time
    import uuid

    before = time.time_ns() // 1_000_000
    ids = [models.new_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: Unix milliseconds
    # Made a millisecond apart, they sort in creation order (the point: B-tree appends).
    first = models.new_id()
    ms = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == ms:
        pass
    assert models.new_id() > first


@pytest.mark.parametrize("name", ["claim_runs", "due_task_runs", "due_event_runs",
                                  "promote_scheduled", "queue_counts", "oldest_due",
                                  "interrupted_started", "requeue_started"])
async def test_queue_queries_read_partial_indexes_not_history(database: db.Database,
                                                              name: str) -> None:
    # Their cost must follow the queue, not the runs kept for retention: no full scan of runs.
    params = {"now": 0.0, "limit": 10, "event_limit": 10, "node": None,
              "max_attempts": runs.MAX_ATTEMPTS, **runs.PRIORITIES}

    def plan(tx: db.Tx) -> list[str]:
        return [row["detail"] for row in tx.conn.execute(
            "EXPLAIN QUERY PLAN " + sql.queries[name], params)]

    details = await database.read(plan)
    scans = [d for d in details if d.startswith("SCAN runs") and "USING" not in d]
    assert not scans, details


async def test_concurrent_writes_share_a_commit_and_fail_alone(database: db.Database,
                                                               monkeypatch) -> None:
    import asyncio
    from collections.abc import Callable

    groups: list[int] = []
    real_group = db._group

    def counting_group(conn, fns):  # type: ignore[no-untyped-def]
        groups.append(len(fns))
        return real_group(conn, fns)

    monkeypatch.setattr(db.Database, "group", staticmethod(counting_group))

    def good(n: int) -> Callable[[db.Tx], int]:
        def fn(tx: db.Tx) -> int:
            tx.conn.execute("INSERT INTO cache (key, value, expires_at) VALUES (?, '1', 9e99)",
                            (f"k{n}",))
            return n
        return fn

    def bad(tx: db.Tx) -> None:
        tx.conn.execute("INSERT INTO cache (key, value, expires_at) VALUES ('bad', '1', 9e99)")
        raise ValueError("this writer fails")

    results = await asyncio.gather(database.write(good(0)), database.write(good(1)),
                                   database.write(bad), database.write(good(2)),
                                   return_exceptions=True)
    assert groups == [4]  # one transaction, one commit, for the four writers
    assert results[0] == 0 and results[1] == 1 and results[3] == 2
    assert isinstance(results[2], ValueError)  # only its caller sees its exception...
    keys = await database.read(lambda tx: [r[0] for r in tx.conn.execute(
        "SELECT key FROM cache ORDER BY key")])
    assert keys == ["k0", "k1", "k2"]  # ...and only its writes were undone
    # When the transaction itself cannot happen, every writer of the group is told.
    await database.write(lambda tx: tx.conn.execute("PRAGMA query_only = 1"))
    refused = await asyncio.gather(database.write(good(3)), database.write(good(4)),
                                   return_exceptions=True)
    assert all(isinstance(r, errors.DatabaseError) for r in refused), refused


def test_run_evolve_is_dataclasses_replace() -> None:
    """`Run.evolve` (the worker's copy of a run) gives what `dataclasses.replace` gives, for a
    change of any field, and refuses a name that is not a field."""
    import dataclasses

    run = models.Run(7, models.RunKind.TASK, models.RunState.DUE, 2, 1.0, "e", "t", None,
                     {"o": 1}, None, True, None, None, 1, 0.5, None, None, task_run_id=3)
    for field, value in zip([f.name for f in dataclasses.fields(models.Run)],
                            [8, models.RunKind.ACTION, models.RunState.FAILED, 3, 2.0, "f", "u",
                             "echo", [1], {"m": 2}, False, {"r": 1}, "boom", 2, 0.7, 0.8, 0.9,
                             4], strict=True):
        assert run.evolve(**{field: value}) == dataclasses.replace(run, **{field: value})
    assert run.evolve() == run and run.evolve() is not run
    with pytest.raises(TypeError, match="no field 'nope'"):
        run.evolve(nope=1)
