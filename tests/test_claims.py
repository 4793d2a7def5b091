"""Every §3-§8 promise across nodes (SPEC §14): race tests on one real PostgreSQL database.

Each "node" here is its own `PgDatabase` (its own writer thread and connection), all driving the
queue's real functions at once from one event loop, as several daemons' workers would: claims,
the routing of due event runs, task-run leases, cache counters, late finishes, monitor flips and
alert emails (a real SMTP server), scheduler slots. The late-finish race runs on SQLite too.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runnerd import models
from runnerd.actions import cache as cache_action
from runnerd.engine import scheduler
from runnerd.models import RunKind, RunState
from runnerd.monitoring import monitors
from runnerd.queue import runs
from runnerd.store import backends, cache, db, sql

from .conftest import ping
from .helpers_servers import smtp_server
from .test_monitors import settings as monitor_settings
from .test_postgres import PIPELINE, PgDaemon

NOW = 1_750_000_000.0
NODES = 4

pytestmark = pytest.mark.timeout(120)


async def open_nodes(pg_url: str, n: int = NODES) -> list[db.Database]:
    """`n` databases on one PostgreSQL database: one per node (the first migrated it)."""
    nodes = []
    for _ in range(n):
        nodes.append(await backends.open_database(Path("unused"), pg_url).open())
    await nodes[0].migrate()
    return nodes


async def close(nodes: list[db.Database]) -> None:
    for node in nodes:
        await node.close()


def store_runs(count: int, kind: RunKind, **row: Any) -> Callable[[db.Tx], list[str]]:
    """A transaction storing `count` due runs of `kind`, each on its own event (no route)."""

    def work(tx: db.Tx) -> list[str]:
        events = [runs.new_event("user/a/b", None, "cli", NOW) for _ in range(count)]
        tx.executemany("insert_event", [
            {"id": e.id, "topic": e.topic, "data": "null", "source": e.source, "parent_id": None,
             "webhook_request_id": None, "task_ids": None, "created_at": NOW} for e in events])
        tx.executemany("insert_run", [runs.run_row(kind, e.id, NOW, **row) for e in events])
        return [e.id for e in events]

    return work


async def until_empty(nodes: list[db.Database],
                      turn: Callable[[db.Database, str], Any]) -> dict[str, list[Any]]:
    """Every node takes turns at once until a turn of each finds nothing; what each took."""
    taken: dict[str, list[Any]] = {}

    async def node_loop(database: db.Database, name: str) -> None:
        taken[name] = []
        for _ in range(10_000):  # bounded
            got = await turn(database, name)
            if not got:
                return
            taken[name].extend(got)
        raise AssertionError("the queue never emptied")

    await asyncio.gather(*(node_loop(d, f"n{i}") for i, d in enumerate(nodes)))
    return taken


async def column(database: db.Database, query: str) -> list[Any]:
    return await database.read(lambda tx: [r[0] for r in tx.conn.execute(query)])


# 1. Claims ------------------------------------------------------------------------------------

async def test_four_claimers_start_each_run_once_and_record_their_node(pg_url: str) -> None:
    nodes = await open_nodes(pg_url)
    try:
        await nodes[0].write(store_runs(3000, RunKind.ACTION, action_type="echo", options={}))

        async def turn(database: db.Database, name: str) -> list[tuple[int, str]]:
            jobs = await database.write(lambda tx: runs.claim(tx, 25, NOW, node=name))
            return [(job.run.id, name) for job in jobs]

        taken = await until_empty(nodes, turn)
        claimed = [pair for got in taken.values() for pair in got]
        ids = [run_id for run_id, _ in claimed]
        assert len(ids) == 3000 and len(set(ids)) == 3000  # 0 duplicates, none left behind
        assert sum(1 for got in taken.values() if got) >= 2  # the claimers did overlap
        stored = await nodes[0].read(lambda tx: {r[0]: r[1] for r in tx.conn.execute(
            "SELECT id, node FROM runs WHERE kind = 'action' AND state = 'started'")})
        assert stored == dict(claimed)
    finally:
        await close(nodes)


# 2. Due event runs routed once --------------------------------------------------------------

def route_to_one_task(tx: db.Tx, event: models.Event, now: float) -> tuple[list[str], list[dict[str, Any]]]:
    return ["T"], [runs.run_row(RunKind.TASK, event.id, now, task_name="T")]


async def test_each_due_event_run_is_routed_by_one_node(pg_url: str) -> None:
    nodes = await open_nodes(pg_url)
    try:
        events = await nodes[0].write(store_runs(1500, RunKind.EVENT))

        async def turn(database: db.Database, name: str) -> list[int]:
            routed = await database.write(
                lambda tx: runs.route_due(tx, route_to_one_task, 20, NOW, name))
            return [1] * routed

        taken = await until_empty(nodes, turn)
        assert sum(len(got) for got in taken.values()) == 1500
        per_event = collections.Counter(await column(
            nodes[0], "SELECT event_id FROM runs WHERE kind = 'task'"))
        assert per_event == {event_id: 1 for event_id in events}  # task runs created once
        assert await column(nodes[0], "SELECT DISTINCT state FROM runs WHERE kind = 'event'") \
            == ["succeeded"]
    finally:
        await close(nodes)


# 3. Task runs rendered once: leases ---------------------------------------------------------

def rendered(job: runs.Job, now: float) -> runs.Outcome:
    """A task run's outcome as the task handler makes it: one action run to create."""
    run = runs.begin(job, now).run
    return runs.Outcome(run, ok=True, result={"rendered": True}, finished_at=now, children=[
        runs.run_row(RunKind.ACTION, run.event_id, now, task_name="T", action_type="echo",
                     options={}, task_run_id=run.id)])


async def test_four_renderers_render_each_task_run_once(pg_url: str) -> None:
    nodes = await open_nodes(pg_url)
    try:
        await nodes[0].write(store_runs(1500, RunKind.TASK, task_name="T"))

        async def turn(database: db.Database, name: str) -> list[int]:
            # As the worker: fetch (and lease) in one transaction, finish in the next.
            jobs = await database.write(lambda tx: runs.due_task_runs(tx, 20, NOW, name))
            await asyncio.sleep(0)
            outcomes = [rendered(job, NOW) for job in jobs]
            done = await database.write(lambda tx: [
                runs.finish(tx, o, NOW, node=name) for o in outcomes])
            assert all(run is not None for run in done)  # a leased run is finished by its node
            return [job.run.id for job in jobs]

        taken = await until_empty(nodes, turn)
        renders = collections.Counter(i for got in taken.values() for i in got)
        assert len(renders) == 1500 and set(renders.values()) == {1}  # each rendered once
        assert sum(1 for got in taken.values() if got) >= 2
        children = collections.Counter(await column(
            nodes[0], "SELECT task_run_id FROM runs WHERE kind = 'action'"))
        assert len(children) == 1500 and set(children.values()) == {1}
        assert await column(nodes[0], "SELECT COUNT(*) FROM runs WHERE lease_until IS NOT NULL") \
            == [0]  # finishing ends the lease
    finally:
        await close(nodes)


async def test_an_expired_lease_is_rendered_again_and_the_late_finish_is_a_no_op(
        pg_url: str) -> None:
    a, b = await open_nodes(pg_url, 2)
    try:
        await a.write(store_runs(1, RunKind.TASK, task_name="T"))
        (job,) = await a.write(lambda tx: runs.due_task_runs(tx, 10, NOW, "a"))
        # Node a renders it (and dies, or is slow): b leaves it alone while the lease holds...
        assert await b.write(lambda tx: runs.due_task_runs(
            tx, 10, NOW + runs.TASK_LEASE_SECONDS - 1, "b")) == []
        # ...and takes it once the lease expired.
        later = NOW + runs.TASK_LEASE_SECONDS + 1
        (again,) = await b.write(lambda tx: runs.due_task_runs(tx, 10, later, "b"))
        assert again.run.id == job.run.id
        late = rendered(job, NOW)
        assert await a.write(lambda tx: runs.finish(tx, late, later, node="a")) is None
        final = await b.write(lambda tx: runs.finish(tx, rendered(again, later), later, node="b"))
        assert final is not None and final.state is RunState.SUCCEEDED
        assert await a.write(lambda tx: runs.finish(tx, late, later, node="a")) is None
        assert await column(a, "SELECT COUNT(*) FROM runs WHERE kind = 'action'") == [1]
        assert await column(a, f"SELECT node FROM runs WHERE id = {job.run.id}") == ["b"]
    finally:
        await close([a, b])


async def test_a_turns_finishes_sent_together_apply_only_those_still_held(pg_url: str) -> None:
    """`finish_all` moves a turn's task runs in one statement on PostgreSQL (`finish_runs`):
    each run still only if it is as it was read and held by the finishing node."""
    a, b = await open_nodes(pg_url, 2)
    try:
        await a.write(store_runs(3, RunKind.TASK, task_name="T"))
        jobs = await a.write(lambda tx: runs.due_task_runs(tx, 10, NOW, "a"))
        later = NOW + runs.TASK_LEASE_SECONDS + 1  # a's leases expired: b renders them all
        again = await b.write(lambda tx: runs.due_task_runs(tx, 10, later, "b"))
        assert sorted(j.run.id for j in again) == sorted(j.run.id for j in jobs)
        first, *rest = sorted(again, key=lambda j: j.run.id)
        await b.write(lambda tx: runs.finish_all(tx, [rendered(first, later)], later, node="b"))
        # a's late finishes (b holds the runs) apply nothing...
        await a.write(lambda tx: runs.finish_all(
            tx, [rendered(j, later + 1) for j in jobs], later + 1, node="a"))
        # ...b's turn moves the two still due, not the one it already finished.
        outcomes = [dataclasses.replace(rendered(j, later + 2), result={"n": [j.run.id]})
                    for j in [first, *rest]]
        await b.write(lambda tx: runs.finish_all(tx, outcomes, later + 2, node="b"))
        rows = await a.read(lambda tx: [tuple(r.values()) for r in tx.conn.execute(
            "SELECT id, state, node, finished_at, result, attempts, lease_until FROM runs"
            " WHERE kind = 'task' ORDER BY id")])
        assert rows == [
            (first.run.id, "succeeded", "b", later, '{"rendered":true}', 1, None),
            *[(j.run.id, "succeeded", "b", later + 2, f'{{"n":[{j.run.id}]}}', 1, None)
              for j in rest]]
        # one action run a task run that moved, none of a's
        assert await column(a, "SELECT COUNT(*) FROM runs WHERE kind = 'action'") == [3]
    finally:
        await close([a, b])


async def test_the_ingest_stores_its_task_runs_leased_to_itself(pg_url: str) -> None:
    a, b = await open_nodes(pg_url, 2)
    try:
        event = runs.new_event("user/a/b", None, "webhook", NOW)
        stored = await a.write(lambda tx: runs.insert_events(tx, [event], NOW, route_to_one_task,
                                                             node="a"))
        (job,) = stored.jobs  # handed over to a's worker without a fetch
        assert await b.write(lambda tx: runs.due_task_runs(tx, 10, NOW + 1, "b")) == []
        # a's own fetch sees it (its worker's `_held` keeps it from rendering it twice).
        assert [j.run.id for j in await a.write(
            lambda tx: runs.due_task_runs(tx, 10, NOW + 1, "a"))] == [job.run.id]
        assert await a.write(lambda tx: runs.finish(tx, rendered(job, NOW), NOW, node="a"))
    finally:
        await close([a, b])


# 4. Cache counters --------------------------------------------------------------------------

async def test_four_writers_times_500_increments_lose_none(pg_url: str) -> None:
    nodes = await open_nodes(pg_url)
    try:
        async def writer(database: db.Database) -> None:
            for _ in range(500):
                await database.write(lambda tx: cache_action.apply(
                    tx, "incr", {"key": "hits", "ttl": cache.MAX_TTL}, NOW))

        await asyncio.gather(*(writer(d) for d in nodes))
        assert await nodes[0].read(lambda tx: cache.get(tx, "hits", NOW)) == 2000
    finally:
        await close(nodes)


# 5. A late finish applies nothing twice -----------------------------------------------------

async def late_finish_after_a_second_claim(first: db.Database, second: db.Database,
                                           again_by: str = "a") -> None:
    """A cache action run claimed by node a, requeued (a stop, or a dead node's recovery) and
    claimed again (`again_by`): the first attempt's late finish must neither finish it nor
    apply its increment."""
    await first.write(store_runs(1, RunKind.ACTION, task_name="T", action_type="cache",
                                 options=["incr", "n"]))
    (job,) = await first.write(lambda tx: runs.claim(tx, 10, NOW, node="a"))
    await first.write(lambda tx: runs.requeue(tx, [job.run.id], NOW, "a"))
    (again,) = await second.write(lambda tx: runs.claim(tx, 10, NOW + 1, node=again_by))
    assert again.run.id == job.run.id and again.run.attempts == 2

    def incr(tx: db.Tx) -> Any:
        return cache_action.apply(tx, "incr", {"key": "n", "ttl": cache.MAX_TTL}, NOW)

    late = runs.Outcome(job.run, ok=True, deferred=incr, finished_at=NOW + 2)
    assert await first.write(lambda tx: runs.finish(tx, late, NOW + 2, node="a")) is None
    assert await first.read(lambda tx: cache.get(tx, "n", NOW)) is None
    on_time = runs.Outcome(again.run, ok=True, deferred=incr, finished_at=NOW + 3)
    final = await second.write(lambda tx: runs.finish(tx, on_time, NOW + 3, node=again_by))
    assert final is not None and final.result == 1
    assert await first.write(lambda tx: runs.finish(tx, late, NOW + 4, node="a")) is None
    assert await first.read(lambda tx: cache.get(tx, "n", NOW)) == 1


async def test_a_late_finish_after_a_second_claim_applies_nothing_on_sqlite(
        database: db.Database) -> None:
    await late_finish_after_a_second_claim(database, database)


@pytest.mark.parametrize("again_by", ["a", "b"])  # the same node again, or another one
async def test_a_late_finish_after_a_second_claim_applies_nothing_on_postgres(
        pg_url: str, again_by: str) -> None:
    a, b = await open_nodes(pg_url, 2)
    try:
        await late_finish_after_a_second_claim(a, b, again_by)
    finally:
        await close([a, b])


async def test_a_stop_requeues_only_the_runs_its_node_still_holds(pg_url: str) -> None:
    """Node a, counted dead, saw its run recovered and started by node b; when a stops at last,
    its requeue of the interrupted run leaves b's run alone."""
    a, b = await open_nodes(pg_url, 2)
    try:
        await a.write(store_runs(1, RunKind.ACTION, task_name="T", action_type="cache",
                                 options=["incr", "n"]))
        (job,) = await a.write(lambda tx: runs.claim(tx, 10, NOW, node="a"))
        await b.write(lambda tx: runs.requeue(tx, [job.run.id], NOW, "a"))  # as recovery does
        (again,) = await b.write(lambda tx: runs.claim(tx, 10, NOW + 1, node="b"))
        await a.write(lambda tx: runs.requeue(tx, [job.run.id], NOW, "a"))  # a's stop, late
        assert await column(a, f"SELECT state || ' ' || node FROM runs WHERE id = {again.run.id}"
                            ) == ["started b"]
    finally:
        await close([a, b])


# 6. Monitors: one state change and one alert per transition --------------------------------

async def test_nodes_ticking_at_once_flip_and_alert_once(pg_url: str, tmp_path: Path) -> None:
    nodes = await open_nodes(pg_url)
    try:
        with smtp_server() as (controller, recorder):
            s = monitor_settings(tmp_path, f"email: {{transport: smtp, from: rd@example.com, "
                                           f"smtp: {{host: 127.0.0.1, port: {controller.port}}}}}\n")
            watchers = [monitors.Monitors(d, lambda: s) for d in nodes]
            await asyncio.gather(*(w.tick(0.0) for w in watchers))  # every node syncs
            await ping(nodes[0], "backup", "succeeded", b"", 0.0)
            for w in watchers:
                w._synced = s  # configuration already synced: the next ticks only evaluate
            # The ping monitor is overdue: every node sees it at the same moment.
            flipped = await asyncio.gather(*(w.tick(10_000.0) for w in watchers))
            assert sorted(len(events) for events in flipped) == [0, 0, 0, 1]
            sent = await asyncio.gather(*(w.deliver(10_000.0) for w in watchers))
            assert sum(sent) == 1 and len(recorder.messages) == 1
            assert "is DOWN" in recorder.messages[0].data.decode()
            for w in watchers:
                if w._executor is not None:
                    await w._executor.close()
        assert await column(nodes[0], "SELECT mail_state FROM monitor_flips") == ["sent"]
        assert await column(nodes[0], "SELECT COUNT(*) FROM events WHERE topic = "
                                      "'runnerd/monitors/down'") == [1]
    finally:
        await close(nodes)


async def test_nodes_ticking_at_once_send_one_summary_of_damped_changes(
        pg_url: str, tmp_path: Path) -> None:
    nodes = await open_nodes(pg_url)
    try:
        s = monitor_settings(tmp_path)
        watchers = [monitors.Monitors(d, lambda: s) for d in nodes]
        await watchers[0].tick(0.0)
        for w in watchers:
            w._synced = s
        # Two changes were damped after an alert at 0 s; the interval (0 s here) has passed.
        await nodes[0].write(lambda tx: tx.conn.execute(
            "UPDATE task_status SET state = 'up', last_run_at = 0, last_success_at = 0, "
            "last_status = 'succeeded', alerted_at = 0, alerted_state = 'down', flaps = 2 "
            "WHERE name = 'backup'"))
        summaries = await asyncio.gather(*(w.tick(1.0) for w in watchers))
        assert sorted(len(events) for events in summaries) == [0, 0, 0, 1]
        assert await column(nodes[0], "SELECT COUNT(*) FROM monitor_flips "
                                      "WHERE mail_state = 'pending'") == [1]
    finally:
        await close(nodes)


# 7. Scheduler slots --------------------------------------------------------------------------

async def test_racing_schedulers_fire_each_slot_once(pg_url: str) -> None:
    nodes = await open_nodes(pg_url)
    try:
        topic = "mechanic/scheduler/10min"
        known = {topic: NOW - 600}
        slots = [NOW + 600 * i for i in range(200)]

        async def node_fires(database: db.Database) -> list[str]:
            fired: list[str] = []
            for slot in slots:
                fired += await database.write(
                    lambda tx, slot=slot: scheduler.fire(tx, {topic: slot}, known, slot))
            return fired

        fired = await asyncio.gather(*(node_fires(d) for d in nodes))
        assert sum(len(f) for f in fired) == 200
        assert await column(nodes[0], "SELECT COUNT(*) FROM events WHERE source = 'scheduler'") \
            == [200]
        assert await column(nodes[0], "SELECT COUNT(*) FROM scheduler_slots") == [200]
    finally:
        await close(nodes)



async def test_a_tasks_work_is_read_by_its_primary_key_whatever_the_planner_knows(
        pg_url: str) -> None:
    """`task_work` (read as each task run finishes) reaches its task run by the primary key,
    even in a generic plan made while `runs` was empty: psycopg prepares a statement after a
    few executions and PostgreSQL keeps that plan until the table is next analysed. One that
    also tested the run's kind got `runs_kind_state` there, a scan of every task run a call:
    a fresh database's node slowed as its runs grew (0.4 -> 1.1 ms of server CPU a pipeline)."""
    (node,) = await open_nodes(pg_url, 1)

    def plan(tx: db.Tx) -> list[str]:
        tx.conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        tx.conn.execute("PREPARE task_work (bigint) AS "
                        + sql.pg_queries()["task_work"].replace("%(id)s", "$1"))
        try:
            return [row[0] for row in tx.conn.execute("EXPLAIN EXECUTE task_work (1)")]
        finally:
            tx.conn.execute("DEALLOCATE task_work")

    try:
        lines = await node.write(plan)
    finally:
        await close([node])
    outer = [line for line in lines if line.lstrip().startswith(("Index Scan", "Seq Scan",
                                                                  "Bitmap Heap Scan"))]
    assert outer and "runs_pkey on runs t " in outer[0], lines


# The daemon claims, leases and routes as its node_name ---------------------------------------

def test_a_daemon_records_its_node_name_on_the_runs_it_performs(make_daemon: Any,
                                                                pg_url: str) -> None:
    d = make_daemon("node_name: web-1\n" + PIPELINE, PgDaemon, url=pg_url).start()
    assert d.post_json("/webhooks/orders", {"id": 7})[0] == 204  # routed by the ingest
    assert d.cli("send", "user/orders/ready", "--data", '{"id": 8}').returncode == 0  # the worker
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 4)
    assert d.stop() == 0
    rows = d.query("SELECT kind, node, lease_until FROM runs ORDER BY id")
    assert len(rows) == 8
    assert {(r["kind"], r["node"], r["lease_until"]) for r in rows} == {
        ("event", "web-1", None), ("task", "web-1", None), ("action", "web-1", None)}


@pytest.mark.parametrize("name", ["claim_runs", "due_task_runs", "due_event_runs"])
async def test_the_queue_statements_read_the_due_index_on_postgres(pg_url: str,
                                                                   name: str) -> None:
    """Their cost follows the queue, not the runs kept for retention: no scan of `runs`."""
    (node,) = await open_nodes(pg_url, 1)
    params = {"now": NOW, "limit": 10, "event_limit": 10, "node": "a",
              "lease_until": NOW + 10, **runs.PRIORITIES}

    def plan(tx: db.Tx) -> list[str]:
        tx.conn.execute("SET LOCAL enable_seqscan = off")  # tiny tables: ask what it can use
        return [row[0] for row in tx.conn.execute(
            "EXPLAIN " + sql.pg_queries()[name], params)]

    try:
        lines = await node.write(plan)
    finally:
        await close([node])
    assert not [line for line in lines if "Seq Scan on runs" in line], lines
    assert any("runs_due" in line for line in lines), lines
