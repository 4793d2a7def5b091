"""The engine: the run kinds, the worker that performs them, and the fast paths that call the
same code earlier (the package docstring says which and why).

Built by the daemon's composition root with what it needs; it hands the ingest its
transaction function (`store_events`) and its after-commit hook (`events_stored`): the queue and
the store never hold a reference to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from runnerd import actions, models
from runnerd.actions import http
from runnerd.engine import run_kinds, worker
from runnerd.queue import runs
from runnerd.store import db
from runnerd.tasks import registry


def http_lane(run: models.Run) -> str | None:
    """The worker's lanes: an http action run's target host."""
    return http.lane(run.action_type, run.options)


class Engine:
    """The run kinds (`kinds`) and the worker (`worker`), wired once."""

    def __init__(
        self,
        database: db.Database,
        get_registry: Callable[[], registry.Registry],
        executors: actions.Registry,
        *,
        reader: db.Reader | None,
        concurrency: int,
        clock: Callable[[], float],
        on_finished: Callable[[list[runs.Outcome]], None],
        on_routed: Callable[[int], None],
        node: str | None = None,
    ) -> None:
        self.kinds = run_kinds.Handlers(get_registry, executors, reader=reader, clock=clock)
        self.on_routed = on_routed
        self.node = node  #: this node's name (`Settings.node`): what it claims, leases, routes
        self.worker = worker.Worker(database, worker.Kinds(render=self.kinds.task_run,
                                                           perform=self.kinds.action_run),
                                    self.kinds.route, concurrency=concurrency, clock=clock,
                                    on_finished=on_finished, on_routed=on_routed,
                                    lane=http_lane, node=node)

    def store_events(self, tx: db.Tx, events: Sequence[models.Event], now: float) -> runs.Stored:
        """Fast path 1, the ingest's transaction function: store a webhook batch and route the
        events due now in the same transaction (`run_kinds.Handlers.route`); the task runs it
        hands over are stored leased to this node. While the worker is behind (it would refuse
        them) none are handed over: they are stored due, and its fetches take them in order."""
        return runs.insert_events(tx, events, now, self.kinds.route, node=self.node,
                                  hand_over=self.worker.takes_offers)

    def events_stored(self, stored: runs.Stored) -> None:
        """Fast path 2, once the ingest's batch is committed: count its routed event runs and
        hand its due task runs to the worker, which renders them without fetching them."""
        if stored.routed:
            self.on_routed(stored.routed)
        if stored.jobs:
            self.worker.offer(stored.jobs)
        self.wake()

    def wake(self, *_: Any) -> None:
        """There is new work: the worker takes a turn now instead of at its next poll."""
        self.worker.wakeup.set()
