"""Nodes sharing one PostgreSQL database (SPEC §14): start-up's orphans, the leader, recovery.

Each node holds a session advisory lock on its name for its lifetime (`store.pg.lock`), so at
start-up the runs its name left `started` are from its own earlier process, dead for sure: they
go back to `due` (`requeue_orphans`). Other nodes' runs are never touched at start-up.
Wherever a started run is found interrupted (start-up, recovery), one whose attempts reached
`runs.MAX_ATTEMPTS` is failed instead (`runs.fail_interrupted`): a run that kills the process
performing it is not handed from restart to restart, or from node to node, forever.

One live node at a time is the leader: it holds the `leases` row 'leader', taken and renewed on
the database's clock every `ttl / 3` (`ttl` is half of `node_timeout`), and steps down locally
before the lease can expire if a renewal fails (`Leader.is_leader`). The leader recovers dead
nodes' work (`recover`): the `started` runs of nodes with no process beating for `node_timeout`
go back to `due` in one guarded statement (the attempt counts; the error names the lost node),
and their `workers` rows are marked lost. Heartbeats, not time-based rescue: a live node's long
action is never requeued. The janitor (retention) runs on the leader only, and takes an advisory
transaction lock besides (`retention.prune`), so two nodes that briefly both think they lead
never prune at once; recovery is idempotent (a second leader's statement finds nothing started).

On SQLite there is one daemon per file (its lock file): start-up requeues every started run
(fails those over the cap), and that daemon is always the leader, without a lease.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from runnerd import errors
from runnerd.queue import runs
from runnerd.store import db

logger = logging.getLogger(__name__)

LEADER = "leader"
#: The share of the lease's TTL after its last renewal started for which a node still acts as
#: leader: it steps down before the lease can expire on the database's clock.
TRUST = 0.8


def shared(database: db.Database) -> bool:
    """Whether nodes may share this database (PostgreSQL), rather than one daemon per file."""
    return database.engine == "postgres"


async def requeue_orphans(database: db.Database, node: str, fail: runs.Fail,
                          now: float) -> tuple[int, list[runs.Outcome]]:
    """Start-up: the runs an earlier process left `started` back to `due` (their attempt counts),
    or failed with `fail` when that attempt was their last (`runs.fail_interrupted`). On SQLite
    every started run (the lock file proves no other process runs one); on PostgreSQL only this
    node's (its advisory lock proves its earlier process is gone), and those a runnerd before
    nodes left without a node. Returns how many were requeued, and the failures recorded."""
    if shared(database):
        found, requeue, params = "interrupted_node_started", "requeue_node_started", {"node": node}
    else:
        found, requeue, params = "interrupted_started", "requeue_started", {}

    def orphans(tx: db.Tx) -> tuple[int, list[runs.Outcome]]:
        failed = runs.fail_interrupted(tx, found, params, fail, now)
        return runs.requeued(tx, requeue, params, now), failed

    return await database.write(orphans)


def log_failed(failed: list[runs.Outcome]) -> None:
    """One warning per run failed by `runs.fail_interrupted`."""
    for outcome in failed:
        run = outcome.run
        logger.warning("run %d (%s run of task %s) failed: %s", run.id, run.kind,
                       run.task_name, outcome.error,
                       extra={"action": "interrupted_run_failed", "run_id": run.id})


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A lease as the database granted it."""

    holder: str
    term: int
    expires_at: float


def take_lease(tx: db.Tx, name: str, holder: str, ttl: float,
               now: float | None = None) -> Lease | None:
    """Take or renew the lease `name` for `holder` for `ttl` seconds from `now` (None: the
    database's clock); None when another holder has it."""
    row = tx.one("lease_take", {"name": name, "holder": holder, "ttl": ttl, "now": now})
    return None if row is None else Lease(row["holder"], int(row["term"]), row["expires_at"])


def recover(tx: db.Tx, node: str, timeout: float, now: float,
            fail: runs.Fail) -> tuple[int, int, list[runs.Outcome]]:
    """The leader's recovery: the started runs of nodes (other than `node`) silent for
    `timeout` seconds back to due, or failed with `fail` when that attempt was their last
    (`runs.fail_interrupted`), and those nodes' rows marked lost. Returns (runs requeued, rows
    marked, failures recorded)."""
    before = now - timeout
    failed = runs.fail_interrupted(tx, "interrupted_lost_runs",
                                   {"node": node, "before": before}, fail, now)
    requeued = runs.requeued(tx, "recover_lost_runs", {"node": node, "before": before,
                                                       "timeout": f"{timeout:g}"}, now)
    lost = tx.execute("workers_lost", {"before": before}).rowcount
    return requeued, lost, failed


class Leader:
    """Takes and renews the 'leader' lease; while it holds it, recovers dead nodes' runs:
    requeued, or failed with `fail` (`recover`); `on_failed` gets those failures once
    committed (the metrics count them), and `on_requeued` is called after either (the worker
    has runs, or the failures' events, to take)."""

    def __init__(self, database: db.Database, node: str, *, timeout: float, fail: runs.Fail,
                 on_failed: Callable[[list[runs.Outcome]], None] = lambda failed: None,
                 on_requeued: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db = database
        self.node = node
        self.timeout = timeout
        self.ttl = timeout / 2
        self.fail = fail
        self.on_failed = on_failed
        self.on_requeued = on_requeued
        self.clock = clock
        self.monotonic = monotonic
        self.term: int | None = None  #: the term of the lease held (None: not the leader)
        self._until = float("-inf")  # monotonic time until which this node acts as leader

    def is_leader(self) -> bool:
        """Whether this node holds the lease now (trusted until TRUST of its TTL)."""
        return self.term is not None and self.monotonic() < self._until

    async def renew(self) -> bool:
        """Take or renew the lease; step down when that fails. Returns is_leader()."""
        started = self.monotonic()
        try:
            lease = await self.db.write(lambda tx: take_lease(tx, LEADER, self.node, self.ttl))
        except errors.DatabaseError as exc:
            logger.error("leader lease not renewed: %s", exc, extra={"action": "db_write_failed"})
            lease = None
        if lease is None:
            if self.term is not None:
                logger.warning("no longer the leader (term %d)", self.term,
                               extra={"action": "leader_lost"})
            self.term = None
            return False
        if self.term != lease.term:
            logger.info("leader of the nodes (term %d)", lease.term,
                        extra={"action": "leader_elected"})
        self.term = lease.term
        self._until = started + self.ttl * TRUST
        return self.is_leader()

    async def duties(self) -> None:
        """While leader: recover dead nodes' runs."""
        if not self.is_leader():
            return
        requeued, lost, failed = await self.db.write(
            lambda tx: recover(tx, self.node, self.timeout, self.clock(), self.fail))
        if lost:
            logger.warning("marked %d silent node process(es) lost", lost,
                           extra={"action": "nodes_lost"})
        log_failed(failed)
        if failed:
            self.on_failed(failed)
        if requeued:
            logger.warning("requeued %d run(s) of lost node(s)", requeued,
                           extra={"action": "lost_runs_requeued"})
        if requeued or failed:
            self.on_requeued()

    async def run(self, stop: asyncio.Event) -> None:
        """Renew every ttl/3 and do the leader's duties, until `stop`; then give the lease up."""
        while not stop.is_set():
            await self.renew()
            try:
                await self.duties()
            except errors.DatabaseError as exc:
                logger.error("recovery not written: %s", exc, extra={"action": "db_write_failed"})
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.ttl / 3)
            except TimeoutError:
                pass
        if self.term is not None:
            self.term = None
            try:
                await self.db.write(lambda tx: tx.execute(
                    "lease_release", {"name": LEADER, "holder": self.node}))
            except errors.DatabaseError:
                pass
