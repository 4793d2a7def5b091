"""Batch, don't chat (SPEC §12, issue 17): on PostgreSQL a transaction's statements travel in
pipeline mode, so an ingest batch and a worker turn wait for the server only where runnerd reads
an answer, not once per statement. Counted, not timed: libpq's protocol trace of the writer
connection says how often the client asked the server for answers (Sync, Flush and simple
Query messages), and that count must not grow with the batch: not for the ingest, not for a
worker turn, whose finishes are sent a phase at a time (the runs' conditional updates, their
children's ids, the in-place cache actions' values, the tasks' works, their status reports),
each phase waited for once."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

from runnerd.queue import runs
from runnerd.store import db

from . import helpers_postgres
from .test_pipeline import Pipeline

#: Client messages after which libpq waits for the server's answers (a round trip each, at most).
WAITS = ("Sync", "Flush", "Query")

TASK = """
    tasks:
      - name: Counter
        subscriptions: user/orders/ready
        code: '{% action "cache", "incrby", "orders", event.data.n %}'
"""


async def _traced(database: db.Database, trace: Path, fn: Any) -> collections.Counter[str]:
    """Run `fn()` (a coroutine function) with libpq's trace of the writer connection on; the
    client's messages by type."""
    writer = database._writer
    assert writer is not None
    fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def on(link: Any) -> None:  # the writer thread's `pg.Link`
        conn = link.get()
        conn.pgconn.trace(fd)
        conn.pgconn.set_trace_flags(1 | 2)  # PQTRACE_SUPPRESS_TIMESTAMPS | PQTRACE_REGRESS_MODE

    try:
        await writer.call(on)
        await fn()
        await writer.call(lambda link: link.get().pgconn.untrace())
    finally:
        os.close(fd)
    sent: collections.Counter[str] = collections.Counter()
    for line in trace.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) > 2 and parts[0] == "F":
            sent[parts[2]] += 1
    return sent


def _waits(sent: collections.Counter[str]) -> int:
    return sum(sent[kind] for kind in WAITS)


async def _measure(tmp_path: Path, clock: Any, url: str, n: int) -> tuple[int, int, int]:
    """Round trips of one ingest batch of `n` webhooks (each routed to a task run handed to the
    worker) and of the worker turn that finishes the `n` task runs, each with a cache action
    performed in place; and the statements of that turn."""
    path = tmp_path / str(n)
    path.mkdir()
    p = await Pipeline(path, clock, TASK, url).open()
    try:
        events = [runs.new_event("user/orders/ready", {"n": 1}, "webhook", clock())
                  for _ in range(n)]
        stored: list[runs.Stored] = []
        assert await p.drain() == 0  # caught up: the worker takes the ingest's task runs

        async def ingest() -> None:
            stored.append(await p.db.write(
                lambda tx: p.parts.engine.store_events(tx, events, clock())))

        ingest_sent = await _traced(p.db, path / "ingest.trace", ingest)
        assert len(stored[0].jobs) == n
        await p.worker._turn(claim=True)  # renders the n due task runs
        assert len(p.worker._done) == n

        async def turn() -> None:
            await p.worker._turn(claim=True)  # finishes them: the turn measured

        turn_sent = await _traced(p.db, path / "turn.trace", turn)
        assert await p.cache("orders") == n
        assert {(r.kind.value, r.state.value) for r in await p.runs()} == {
            ("event", "succeeded"), ("task", "succeeded"), ("action", "succeeded")}
        return _waits(ingest_sent), _waits(turn_sent), turn_sent["Execute"]
    finally:
        await p.close()


async def test_round_trips_stay_bounded_as_the_batch_grows(
        tmp_path: Path, clock: Any, pg_url: str,
        postgres_server: helpers_postgres.Server) -> None:
    small, large = 4, 32
    ingest_small, turn_small, statements_small = await _measure(tmp_path, clock, pg_url, small)
    ingest_large, turn_large, statements_large = await _measure(
        tmp_path, clock, postgres_server.new_database(), large)
    # The ingest: one round trip for the whole batch plus the transaction's own, whatever its
    # size (per statement it was ~1 per webhook: 71 for 64).
    assert ingest_large <= 8, ingest_large
    assert ingest_large - ingest_small <= 2, (ingest_small, ingest_large)
    # The turn: ~6 statements a run, and its round trips do not grow with the runs it finishes
    # (12 for 4 or 32 task runs; with a wait per read it was 5.1 a run, per statement 8.2): a
    # read per run reintroduced fails this.
    per_run_statements = (statements_large - statements_small) / (large - small)
    assert per_run_statements >= 5, per_run_statements  # the count sees the statements
    assert turn_large <= 16, turn_large
    assert turn_large - turn_small <= 2, (turn_small, turn_large)
