"""What the running daemon's parts share: the database, the current registry, the ingest queue."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from runnerd import actions, config
from runnerd.store import db
from runnerd.tasks.registry import Registry

if TYPE_CHECKING:
    from runnerd.engine import scheduler, worker
    from runnerd.monitoring import heartbeat, metrics, monitors
    from runnerd.queue import ingest


@dataclasses.dataclass(slots=True)
class State:
    """Mutable only through `swap` (a reload)."""

    db: db.Database
    registry: Registry
    ingest: ingest.Ingest
    executors: actions.Registry
    worker: worker.Worker | None = None
    scheduler: scheduler.Scheduler | None = None
    monitors: monitors.Monitors | None = None
    heartbeat: heartbeat.Heartbeat | None = None
    metrics: metrics.Metrics | None = None
    clock: Callable[[], float] = time.time
    started_at: float = dataclasses.field(default_factory=time.time)

    @property
    def settings(self) -> config.Settings:
        """The configuration in force."""
        return self.registry.settings

    def get_registry(self) -> Registry:
        """The registry in force (handlers call this per run, so a reload applies at once)."""
        return self.registry

    def swap(self, new: Registry) -> None:
        """Put a new configuration in force."""
        self.registry = new
