"""What each group of HTTP handlers may use: one narrow view per group, built by the daemon.

`Current` is the configuration in force (a reload swaps it); the views hold it, never a copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from runnerd import actions, config
from runnerd.store import db
from runnerd.tasks.registry import Registry

if TYPE_CHECKING:
    from runnerd.engine import scheduler
    from runnerd.monitoring import heartbeat, metrics, monitors
    from runnerd.queue import ingest


class Current:
    """The compiled configuration in force; replaced only by `swap` (a reload)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @property
    def settings(self) -> config.Settings:
        """The settings in force."""
        return self.registry.settings

    def get_registry(self) -> Registry:
        """The registry in force (called per run and per request, so a reload applies at once)."""
        return self.registry

    def swap(self, new: Registry) -> None:
        """Put a new configuration in force."""
        self.registry = new


@dataclasses.dataclass(frozen=True, slots=True)
class Webhooks:
    """POST /webhooks/{name}: the webhooks in force, the ingest, the clock."""

    config: Current
    ingest: ingest.Ingest
    clock: Callable[[], float]
    #: called with the status code of every webhook request (metrics)
    on_webhook: Callable[[int], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Api:
    """/api/*: the admin token and tasks in force, the database, the executors (redaction)."""

    config: Current
    db: db.Database
    executors: actions.Registry
    clock: Callable[[], float]
    #: there is new work for the worker (an event stored, a run retried)
    wake: Callable[[], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Ops:
    """/ping/*, /health, /metrics, /status: the monitoring parts and the database."""

    config: Current
    db: db.Database
    clock: Callable[[], float]
    heartbeat: heartbeat.Heartbeat
    monitors: monitors.Monitors
    metrics: metrics.Metrics
    scheduler: scheduler.Scheduler
    #: a ping stored events: wake the worker (their runs) and the alerts (their emails)
    wake: Callable[[], None]
