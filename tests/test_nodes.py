"""Several runnerd nodes on one PostgreSQL database (SPEC §14): node names, `workers`, start-up,
the leader's lease, dead-node recovery, retention from one node at a time. Real connections for
the races, real daemons for the rest (tests/test_postgres.py has the single-node tests)."""

from __future__ import annotations

import asyncio
import http.server
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runnerd import config
from runnerd.engine import nodes
from runnerd.queue import retention, runs
from runnerd.store import backends, db

from . import test_postgres
from .conftest import scrape, value, wait_until
from .test_postgres import PgDaemon

T = 1_750_000_000.0
EVENT = "0b6c1ad0-3c8f-4b0e-9d5e-9e1a3f4c2d11"


def fail(job: runs.Job, error: str) -> runs.Outcome:
    """A `runs.Fail` without the engine's follow-up events (the daemon's tests have those)."""
    return runs.Outcome(job.run, ok=False, error=error)


def pg_connect(url: str) -> Any:
    from runnerd.store import pg

    return pg.connect(url)


def tx_on(conn: Any) -> db.Tx:
    """Named queries on a raw psycopg connection (the caller writes BEGIN and COMMIT)."""
    from runnerd.store import pg

    return pg.PgQueries(conn)  # type: ignore[arg-type,return-value]


async def migrated(url: str) -> db.Database:
    database = await backends.open_database(Path("unused"), url).open()
    await database.migrate()
    return database


def seed(conn: Any, runs: list[tuple[str, str | None]], workers: list[tuple[str, str, float]]
         ) -> list[int]:
    """An event with one started action run per (state, node) of `runs`, and a `workers` row per
    (id, node, heartbeat_at) of `workers`; returns the runs' ids."""
    conn.execute("INSERT INTO events (id, topic, data, source, created_at)"
                 " VALUES (%s, 't', '{}', 'cli', %s)", (EVENT, T))
    ids = []
    for state, node in runs:
        row = conn.execute(
            "INSERT INTO runs (kind, state, priority, run_at, event_id, action_type, options,"
            " meta, created_at, attempts, started_at, node) VALUES ('action', %s, 3, %s, %s,"
            " 'echo', '[]', '{}', %s, 1, %s, %s) RETURNING id",
            (state, T, EVENT, T, T, node)).fetchone()
        ids.append(row["id"])
    for worker_id, node, beat in workers:
        conn.execute("INSERT INTO workers (id, pid, host, started_at, heartbeat_at, healthy,"
                     " node) VALUES (%s, 1, 'h', %s, %s, 1, %s)", (worker_id, T, beat, node))
    return ids


# -- recovery -------------------------------------------------------------------------------

async def test_recovery_requeues_only_silent_nodes_runs(pg_url: str) -> None:
    database = await migrated(pg_url)
    try:
        conn = pg_connect(pg_url)
        now = T + 100
        dead, live, mine, stopped = seed(
            conn, [("started", "dead"), ("started", "live"), ("started", "me"),
                   ("started", "gone")],
            [("w-dead", "dead", now - 31), ("w-live", "live", now - 29), ("w-me", "me", now),
             ("w-old-live", "live", now - 500)])
        conn.execute("INSERT INTO workers (id, pid, host, started_at, heartbeat_at, healthy, node,"
                     " stopped_at) VALUES ('w-gone', 1, 'h', %s, %s, 0, 'gone', %s)",
                     (T, now, now))
        requeued, lost, _ = await database.write(
            lambda tx: nodes.recover(tx, "me", 30.0, now, fail))
        assert (requeued, lost) == (2, 2)  # dead's and gone's (stopped) runs; two silent rows
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM runs").fetchall()}
        for run_id, node in ((dead, "dead"), (stopped, "gone")):
            assert rows[run_id]["state"] == "due" and rows[run_id]["node"] is None
            assert rows[run_id]["attempts"] == 1  # the lost attempt counts
            assert rows[run_id]["error"] == f"node {node} lost (no heartbeat for 30 s)"
        # A live node's long action (started long ago, its node beating) is never requeued.
        assert rows[live]["state"] == rows[mine]["state"] == "started"
        beats = {r["id"]: r for r in conn.execute("SELECT * FROM workers").fetchall()}
        assert beats["w-dead"]["healthy"] == 0 and beats["w-dead"]["problem"] == (
            "lost: no heartbeat")
        assert beats["w-live"]["healthy"] == 1 and beats["w-me"]["healthy"] == 1
        assert await database.write(
            lambda tx: nodes.recover(tx, "me", 30.0, now, fail)) == (0, 0, [])
        conn.close()
    finally:
        await database.close()


async def test_recovery_fails_a_lost_run_out_of_attempts(pg_url: str) -> None:
    """A dead node's run whose interrupted attempt was its last is failed, not requeued (a run
    that kills every node performing it would otherwise walk from node to node); the others
    are requeued as before. tests/test_interrupted.py has it with real nodes."""
    database = await migrated(pg_url)
    try:
        conn = pg_connect(pg_url)
        now = T + 100
        spent, spare, live = seed(conn, [("started", "dead"), ("started", "dead"),
                                         ("started", "live")],
                                  [("w-dead", "dead", now - 31), ("w-live", "live", now)])
        for run_id, attempts in ((spent, runs.MAX_ATTEMPTS), (spare, runs.MAX_ATTEMPTS - 1),
                                 (live, runs.MAX_ATTEMPTS)):
            conn.execute("UPDATE runs SET attempts = %s WHERE id = %s", (attempts, run_id))
        requeued, lost, failed = await database.write(
            lambda tx: nodes.recover(tx, "me", 30.0, now, fail))
        assert (requeued, lost, [o.run.id for o in failed]) == (1, 1, [spent])
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM runs").fetchall()}
        assert (rows[spent]["state"], rows[spent]["attempts"], rows[spent]["node"],
                rows[spent]["finished_at"]) == ("failed", runs.MAX_ATTEMPTS, "dead", now)
        assert rows[spent]["error"] == (
            f"interrupted on attempt {runs.MAX_ATTEMPTS} of {runs.MAX_ATTEMPTS} (the daemon "
            f"stopped or crashed while performing it); not retried again: runnerd runs retry "
            f"{spent} to try again")
        assert (rows[spare]["state"], rows[spare]["attempts"], rows[spare]["error"]) == (
            "due", runs.MAX_ATTEMPTS - 1, "node dead lost (no heartbeat for 30 s)")
        assert rows[live]["state"] == "started"  # a live node's run is never touched
        # The requeued run's interrupted attempt is kept; the failed one's is the run itself.
        kept = [dict(r) for r in conn.execute("SELECT * FROM run_attempts").fetchall()]
        assert kept == [{"run_id": spare, "attempt": runs.MAX_ATTEMPTS - 1, "started_at": T,
                         "finished_at": now, "error": "node dead lost (no heartbeat for 30 s)"}]
        assert await database.write(
            lambda tx: nodes.recover(tx, "me", 30.0, now, fail)) == (0, 0, [])
        conn.close()
    finally:
        await database.close()


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def _finish(conn: Any, run_id: int) -> int:
    conn.execute("BEGIN")
    n = tx_on(conn).execute("finish_run", {
        "id": run_id, "from": "started", "state": "succeeded", "result": None, "error": None,
        "now": T + 101, "started_at": T, "attempts": 1,
        "node": "dead", "held": 1}).rowcount  # the claims branch guards by attempt and node
    return n


def _recover(conn: Any) -> int:
    conn.execute("BEGIN")
    return nodes.recover(tx_on(conn), "me", 30.0, T + 100, fail)[0]


@pytest.mark.parametrize("first", ["finish", "recovery"])
async def test_recovery_racing_a_late_finish_of_the_same_run(pg_url: str, first: str) -> None:
    """Whichever commits first wins; the other is a no-op: a finished run is never requeued,
    a requeued run is never finished by the lost node's late finish."""
    await (await migrated(pg_url)).close()
    setup = pg_connect(pg_url)
    [run_id] = seed(setup, [("started", "dead")], [("w-dead", "dead", T)])
    one, two = pg_connect(pg_url), pg_connect(pg_url)
    try:
        steps = {"finish": lambda conn: _finish(conn, run_id), "recovery": _recover}
        second = "recovery" if first == "finish" else "finish"
        assert steps[first](one) == 1
        # The second blocks on the first's row lock, then re-checks its guard on the new row.
        thread, out = _in_thread(lambda: steps[second](two))
        wait_until(lambda: setup.execute(
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()["n"] == 1, timeout=10, message="the second transaction waits")
        one.execute("COMMIT")
        thread.join(timeout=10)
        two.execute("COMMIT")
        assert out == [0]
        row = setup.execute("SELECT state, node FROM runs WHERE id = %s", (run_id,)).fetchone()
        assert row["state"] == ("succeeded" if first == "finish" else "due")
    finally:
        for conn in (setup, one, two):
            conn.close()


# -- the leader's lease ---------------------------------------------------------------------

async def test_lease_terms_under_contention(pg_url: str) -> None:
    """N connections race for the lease on an injected clock: every grant names its taker, one
    holder per term, terms rise with each change of holder, and a takeover only after the
    previous holder's lease expired."""
    await (await migrated(pg_url)).close()
    ttl, threads, rounds = 1.0, 6, 120
    tick = iter(range(10**9))
    clock_lock = threading.Lock()
    grants: list[tuple[str, int, float, float, bool]] = []  # holder, term, now, expires, took
    problems: list[str] = []

    def contend(me: str, seed_: int) -> None:
        rng = random.Random(seed_)
        conn = pg_connect(pg_url)
        held: int | None = None
        for _ in range(rounds):
            with clock_lock:
                now = T + next(tick) * 0.05
            lease = nodes.take_lease(tx_on(conn), nodes.LEADER, me, ttl, now)
            if lease is not None:
                if lease.holder != me:
                    problems.append(f"{me} got a lease naming {lease.holder}")
                grants.append((me, lease.term, now, lease.expires_at, held != lease.term))
                held = lease.term
            else:
                held = None
            if rng.random() < 0.2:
                time.sleep(rng.random() * 0.02)  # now and then a node falls silent
        conn.close()

    workers = [threading.Thread(target=contend, args=(f"n{i}", i)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not problems
    by_term: dict[int, set[str]] = {}
    for holder, term, *_ in grants:
        by_term.setdefault(term, set()).add(holder)
    assert all(len(holders) == 1 for holders in by_term.values()), by_term
    terms = sorted(by_term)
    assert len(terms) > 3 and terms == list(range(1, len(terms) + 1))  # each change: +1
    for term in terms[1:]:
        takeover = [g for g in grants if g[1] == term and g[4]]
        assert len(takeover) == 1
        latest_expiry = max(g[3] for g in grants if g[1] == term - 1)
        assert takeover[0][2] > latest_expiry - 1e-9, (term, takeover, latest_expiry)
        assert by_term[term] != by_term[term - 1]


async def test_the_leader_steps_down_when_it_cannot_renew(pg_url: str) -> None:
    database = await migrated(pg_url)
    try:
        mono = [100.0]
        a = nodes.Leader(database, "a", timeout=30.0, fail=fail,
                         monotonic=lambda: mono[0])
        b = nodes.Leader(database, "b", timeout=30.0, fail=fail,
                         monotonic=lambda: mono[0])
        assert await a.renew() is True and a.term == 1
        assert await b.renew() is False and not b.is_leader()
        mono[0] += 15 * nodes.TRUST - 0.01
        assert a.is_leader()
        mono[0] += 0.02  # no renewal for TRUST of the TTL: it stops acting before expiry
        assert not a.is_leader()
        conn = pg_connect(pg_url)
        conn.execute("UPDATE leases SET expires_at = 0")  # a's lease ran out on the server
        assert await b.renew() is True and b.term == 2
        assert await a.renew() is False and a.term is None  # renewal refused: a steps down
        conn.close()
    finally:
        await database.close()


async def test_retention_runs_from_one_node_at_a_time(pg_url: str, tmp_path: Path) -> None:
    database = await migrated(pg_url)
    try:
        conn = pg_connect(pg_url)
        conn.execute("INSERT INTO cache (key, value, expires_at) VALUES ('k', '1', 1)")
        conn.execute("BEGIN")
        assert tx_on(conn).one("prune_lock")["ok"]  # another node prunes now
        settings = config.Settings(tmp_path / "x.yaml", tmp_path / "x.db")
        assert await retention.prune(database, settings, T) == {}
        conn.execute("COMMIT")
        done = await retention.prune(database, settings, T)
        assert done["cache_keys_purged"] == 1
        conn.close()
    finally:
        await database.close()


# -- real nodes -----------------------------------------------------------------------------

#: test_postgres's pipeline (a cache incr and an email to the outbox per event) and a cache
#: `set` of the event's own key: exactly once, whichever node performs it.
PIPELINE = test_postgres.PIPELINE + '      {% action "cache", "set", event.data.key, event.data.n %}\n'
ACTIONS = 3  # per event


class Node(PgDaemon):
    """A runnerd node named `name` on the database `url`, in its own directory."""

    def __init__(self, tmp: Path, body: str, url: str, name: str, timeout: str = "3s",
                 home: str | None = None) -> None:
        self.name = name
        self.timeout = timeout
        (tmp / (home or name)).mkdir()
        super().__init__(tmp / (home or name), body, url)

    def write_config(self, body: str) -> None:
        super().write_config(f"node_name: {self.name}\nnode_timeout: {self.timeout}\n{body}")


@pytest.fixture
def make_node(make_daemon: Any, pg_url: str) -> Callable[..., Node]:
    """`make_daemon` of `Node`s on one fresh PostgreSQL database."""
    return lambda name, body=PIPELINE, **kwargs: make_daemon(body, Node, url=pg_url, name=name,
                                                             **kwargs)


def test_nodes_with_other_names_share_a_database_one_name_is_one_node(make_node: Any) -> None:
    a, b = make_node("a").start(), make_node("b").start()
    twin = make_node("a", home="a2")
    done = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(twin.config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert (f"another runnerd node named 'a' (pid {a.proc.pid} on " in done.stderr  # type: ignore[union-attr]
            and f"is already running on {a.pg_url}" in done.stderr)
    listed = json.loads(a.cli("workers", "--json").stdout)
    assert sorted(r["node"] for r in listed) == ["a", "b"]
    assert all(r["alive"] and r["healthy"] for r in listed)
    text = b.cli("workers").stdout.splitlines()
    assert text[0].split()[:3] == ["NODE", "WORKER", "ALIVE"]
    assert sorted(line.split()[0] for line in text[1:]) == ["a", "b"]
    assert a.stop() == 0 and b.stop() == 0


def test_a_restart_leaves_other_nodes_runs_and_rows_alone(make_node: Any) -> None:
    a, b = make_node("a").start(), make_node("b").start()
    # A long action of a's, started (what the claim records), and one of b's earlier life.
    a.query("INSERT INTO events (id, topic, data, source, created_at)"
            " VALUES (?, 't', '{}', 'cli', ?) RETURNING id", (EVENT, time.time()))
    ids = {node: a.query(
        "INSERT INTO runs (kind, state, priority, run_at, event_id, action_type, options,"
        " meta, created_at, attempts, started_at, node) VALUES ('action', 'started', 3,"
        " ?, ?, 'echo', '[]', '{}', ?, 1, ?, ?) RETURNING id",
        (time.time(), EVENT, time.time(), time.time(), node))[0]["id"] for node in ("a", "b")}
    mine = f"SELECT state, node FROM runs WHERE id = {ids['a']}"  # a's long action
    b.kill()
    b.start()
    # b's own orphan requeued (then performed by any node), a's untouched.
    assert any("requeued 1 run(s) left started by a crash" in line for line in b.log_lines())
    # (b's requeued orphan may be claimed by a meanwhile: a's long action is known by its id)
    assert [dict(r) for r in a.query(mine)] == [{"state": "started", "node": "a"}]
    workers = {r["node"]: r for r in a.query(
        "SELECT * FROM workers WHERE stopped_at IS NULL AND healthy = 1")}
    assert set(workers) == {"a", "b"}  # the restart did not mark a gone
    status, _, body = a.request("GET", "/health")
    assert status == 200, body
    # Several node_timeouts later a's long action is still a's: it keeps beating.
    wait_until(lambda: len(a.query("SELECT id FROM workers WHERE node = 'a'"
                                   " AND heartbeat_at > ?", (time.time() - 1,))) == 1)
    time.sleep(4)  # > node_timeout (3 s): a leader would have requeued a's run by now
    assert [dict(r) for r in a.query(mine)] == [{"state": "started", "node": "a"}]
    assert a.stop() == 0 and b.stop() == 0


def test_metrics_name_the_node_and_the_leader(make_node: Any) -> None:
    a = make_node("a").start()

    def leads() -> bool:
        try:
            return value(scrape(a), "runnerd_node_info", "runnerd_node_info", node="a",
                         leader="1") == 1
        except KeyError:
            return False

    wait_until(leads, message="a leads")
    b = make_node("b").start()
    assert value(scrape(b), "runnerd_node_info", "runnerd_node_info", node="b", leader="0") == 1
    assert a.stop() == 0 and b.stop() == 0


def _post(node: Node, n: int) -> str | None:
    """POST one webhook to `node`; its request id when answered 204, else None."""
    try:
        status, headers, _ = node.post_json("/webhooks/orders", {"n": n, "key": f"k{n}"})
    except OSError:
        return None
    return headers["X-Request-Id"] if status == 204 else None


class _Slow(http.server.BaseHTTPRequestHandler):
    """Answers GET /N after a while, recording N: an action that is still running when its
    node is killed."""

    seen: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        time.sleep(0.4)
        self.seen.append(int(self.path.strip("/")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[tuple[int, list[int]]]:
    seen: list[int] = []
    handler = type("Handler", (_Slow,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def _load(group: list[Node], rng: random.Random, accepted: dict[str, int], count: int,
          start: int, down: Node | None = None) -> int:
    """`count` webhooks to random live nodes (not `down`); returns the next number."""
    n = start
    for _ in range(count):
        node = group[rng.randrange(len(group))]
        if node is down or node.proc is None or node.proc.poll() is not None:
            continue
        rid = _post(node, n)
        if rid is not None:
            accepted[rid] = n
        n += 1
    return n


def _started_by(node: Node) -> int:
    return int(node.query("SELECT COUNT(*) AS n FROM runs WHERE state = 'started' AND node = ?",
                          (node.name,))[0]["n"])


@pytest.mark.timeout(240)
def test_kill_9_of_nodes_under_load_loses_and_leaves_nothing(
        make_node: Any, slow_server: tuple[int, list[int]]) -> None:
    """Three nodes (node_timeout 3 s) take webhooks whose tasks call a slow HTTP server; in each
    round one node is killed with SIGKILL while it performs actions, stays down until the
    leader has put its started runs back to due, then restarts. Every 204'd request is stored
    once and processed (each task run rendered once, its actions performed: the http call at
    least once, the cache `set` from the event's data exactly once), nothing stays started past
    node_timeout + a few seconds, and the survivors stay healthy throughout."""
    port, seen = slow_server
    body = PIPELINE + (f'      {{% capture url %}}http://127.0.0.1:{port}/{{{{ event.data.n }}}}'
                       '{% endcapture %}\n      {% action "http", method: "get", url: url %}\n')
    rng = random.Random(1705)  # seeded: the same schedule of posts and kills every run
    group = [make_node(name, body).start() for name in ("a", "b", "c")]
    accepted: dict[str, int] = {}
    n = 0
    for round_ in range(4):
        n = _load(group, rng, accepted, 30, n)
        victim = group[(round_ + rng.randrange(3)) % 3]
        wait_until(lambda victim=victim: _started_by(victim) > 0, timeout=20,
                   message=f"{victim.name} performs actions")
        time.sleep(rng.random() * 0.3)  # a random moment within its work
        victim.kill()
        for other in group:
            if other is not victim:
                status, _, health = other.request("GET", "/health")
                assert status == 200, (other.name, health)
        n = _load(group, rng, accepted, 15, n, down=victim)
        # The leader requeues the dead node's runs once its heartbeat is 3 s old.
        wait_until(lambda victim=victim: _started_by(victim) == 0, timeout=3 + 5,
                   message=f"{victim.name}'s started runs requeued")
        victim.start()
    first = group[0]
    stored = first.query("SELECT webhook_request_id, COUNT(*) AS n FROM events"
                         " WHERE webhook_request_id IS NOT NULL GROUP BY webhook_request_id")
    assert {r["webhook_request_id"] for r in stored} == set(accepted)
    assert all(r["n"] == 1 for r in stored)
    total = len(accepted)
    first.wait_runs("kind = 'action' AND state = 'succeeded'", (ACTIONS + 1) * total, timeout=60)
    assert first.query("SELECT COUNT(*) AS n FROM runs WHERE kind = 'task'")[0]["n"] == total
    assert first.query("SELECT COUNT(*) AS n FROM runs WHERE kind = 'action'")[0]["n"] == (
        (ACTIONS + 1) * total)  # and the http call
    assert int(first.cli("cache", "get", "orders").stdout) >= total  # incr: at least once
    cached = {r["key"]: r["value"] for r in first.query("SELECT key, value FROM cache")}
    assert all(cached.get(f"k{i}") == str(i) for i in accepted.values())
    assert set(seen) >= set(accepted.values())  # every http call made, some twice
    wait_until(lambda: first.query("SELECT COUNT(*) AS n FROM runs WHERE state IN"
                                   " ('started', 'due', 'scheduled')")[0]["n"] == 0,
               timeout=3 + 5, message="nothing left started or due")
    assert any("run(s) of lost node(s)" in line for node in group for line in node.log_lines())
    for node in group:
        status, _, health = node.request("GET", "/health")
        assert status == 200, (node.name, health)
    assert all(node.stop() == 0 for node in group)


def test_sqlite_ignores_node_settings(make_daemon: Any) -> None:
    d = make_daemon("node_name: a\nnode_timeout: 3s\n" + PIPELINE).start()
    second = subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(d.config)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1 and "already running on" in second.stderr
    assert d.query("SELECT COUNT(*) AS n FROM leases")[0]["n"] == 0  # always its own leader
    assert d.stop() == 0


def test_janitor_runs_on_the_leader_only(tmp_path: Path) -> None:
    from runnerd import daemon
    from runnerd.engine import scheduler

    path = tmp_path / "runnerd.yaml"
    path.write_text(f"database: {tmp_path / 'j.db'}\n")
    reg = daemon.load(str(path), {})

    async def janitor_purges(leads: bool) -> bool:
        database = await backends.open_database(tmp_path / "j.db", None).open()
        try:
            await database.migrate()
            await database.write(lambda tx: tx.execute("cache_set", {
                "key": "old", "value": "1", "expires_at": T - 1}))
            ticks = scheduler.Scheduler(database, lambda: reg, on_fire=lambda: None,
                                        clock=lambda: T, is_leader=lambda: leads)
            stop = asyncio.Event()
            task = asyncio.create_task(ticks.run(stop))
            await asyncio.sleep(0.3)  # its first pass: the janitor is due at once
            stop.set()
            await task
            left = await database.read(lambda tx: tx.all("cache_keys", {"now": T - 10}))
            return not left
        finally:
            await database.close()

    assert asyncio.run(janitor_purges(False)) is False
    assert asyncio.run(janitor_purges(True)) is True


async def test_prune_by_hand_while_another_node_prunes_is_one_line(
        make_node: Any, pg_url: str) -> None:
    await (await migrated(pg_url)).close()
    node = make_node("a")
    conn = pg_connect(pg_url)
    try:
        conn.execute("BEGIN")
        assert tx_on(conn).one("prune_lock")["ok"]
        done = await asyncio.to_thread(node.cli, "prune")
        assert done.returncode == 1 and done.stderr.splitlines()[-1] == (
            "runnerd: prune: another runnerd is applying retention now; nothing pruned")
        conn.execute("COMMIT")
        assert (await asyncio.to_thread(node.cli, "prune")).returncode == 0
    finally:
        conn.close()
