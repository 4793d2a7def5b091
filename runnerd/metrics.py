"""Prometheus metrics for GET /metrics, in a registry of the daemon's own (not the global one).

Counted as things happen: runs finished (the worker's `on_finished` hook) with their durations,
and webhook requests by status code (the listener's `on_webhook` hook). Read at scrape time,
cached for `CACHE_SECONDS`: queue depth and lag (partial-index queries only, so history costs
nothing), events created by source (the `event_counts` table a trigger keeps, so CLI events count
and pruning never lowers it), worker health and the scheduler's last ticks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import prometheus_client
import prometheus_client.exposition
from prometheus_client import core

from runnerd import db, models, runs

#: Run durations: from a cache write (ms) to a slow HTTP call or a long render (minutes).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
           60.0, 120.0, 300.0, 900.0)
CACHE_SECONDS = 2.0
QUEUE_STATES = ("scheduled", "due", "started")
#: The classic text format (what generate_latest writes), understood by every Prometheus.
CONTENT_TYPE = getattr(prometheus_client.exposition, "CONTENT_TYPE_PLAIN_0_0_4",
                       "text/plain; version=0.0.4; charset=utf-8")


def snapshot(tx: db.Tx, now: float) -> dict[str, Any]:
    """What the scrape-time gauges need, in one read."""
    queue = {(k.value, s): 0 for k in models.RunKind for s in QUEUE_STATES}
    for row in tx.all("queue_counts"):
        queue[(row["kind"], row["state"])] = row["n"]
    lag = runs.queue_lag(tx, now)
    events = {row["source"]: row["n"] for row in tx.all("event_counts")}
    return {"queue": queue, "lag": lag, "events": events}


class _Scraped:
    """A collector yielding the scrape-time families from the last snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[core.Metric]:
        m = self.metrics
        snap = m.snapshot
        queue = core.GaugeMetricFamily("runnerd_queue_runs", "Runs waiting or being performed",
                                       labels=["kind", "state"])
        for (kind, state), n in sorted(snap.get("queue", {}).items()):
            queue.add_metric([kind, state], n)
        yield queue
        yield core.GaugeMetricFamily("runnerd_queue_lag_seconds",
                                     "Age of the oldest due run (0 when none is due)",
                                     value=snap.get("lag", 0.0))
        events = core.CounterMetricFamily("runnerd_events", "Events created, by source",
                                          labels=["source"])
        for source, n in sorted(snap.get("events", {}).items()):
            events.add_metric([source], n)
        yield events
        yield core.GaugeMetricFamily("runnerd_worker_healthy",
                                     "1 when the daemon is healthy (see /health)",
                                     value=1.0 if m.healthy() else 0.0)
        ticks = core.GaugeMetricFamily("runnerd_scheduler_last_tick_timestamp_seconds",
                                       "When each scheduler topic last fired (Unix time)",
                                       labels=["topic"])
        for topic, at in sorted(m.last_ticks().items()):
            ticks.add_metric([topic], at)
        yield ticks


class Metrics:
    """The daemon's collectors."""

    def __init__(self, *, healthy: Callable[[], bool] = lambda: True,
                 last_ticks: Callable[[], Mapping[str, float]] = dict) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.healthy = healthy
        self.last_ticks = last_ticks
        self.runs = prometheus_client.Counter(
            "runnerd_runs", "Runs that reached a final state", ["kind", "state"],
            registry=self.registry)
        self.duration = prometheus_client.Histogram(
            "runnerd_run_duration_seconds", "Time from a run's start to its end", ["kind"],
            buckets=BUCKETS, registry=self.registry)
        self.webhooks = prometheus_client.Counter(
            "runnerd_webhook_requests", "Webhook requests answered, by status code", ["code"],
            registry=self.registry)
        for kind in models.RunKind:
            self.duration.labels(kind.value)
            for state in ("succeeded", "failed"):
                self.runs.labels(kind.value, state)
        self.snapshot: dict[str, Any] = {}
        self._snapshot_at: float | None = None
        self.registry.register(_Scraped(self))

    def finished(self, outcomes: Sequence[runs.Outcome]) -> None:
        """The worker's hook: count final outcomes (automatic retries are not final)."""
        for outcome in outcomes:
            run = outcome.run
            if not outcome.ok and outcome.retryable and run.attempts < runs.MAX_ATTEMPTS:
                continue
            state = "succeeded" if outcome.ok else "failed"
            self.runs.labels(run.kind.value, state).inc()
            if run.started_at is not None and outcome.finished_at:
                self.duration.labels(run.kind.value).observe(
                    max(0.0, outcome.finished_at - run.started_at))

    def routed(self, event_runs: int) -> None:
        """Event runs performed where their events were stored (see `runs.insert_events`)."""
        self.runs.labels(models.RunKind.EVENT.value, "succeeded").inc(event_runs)
        duration = self.duration.labels(models.RunKind.EVENT.value)
        for _ in range(event_runs):
            duration.observe(0.0)

    def webhook(self, code: int) -> None:
        """The listener's hook: one webhook request answered with `code`."""
        self.webhooks.labels(str(code)).inc()

    async def refresh(self, database: db.Database, now: float, *,
                      monotonic: Callable[[], float] = time.monotonic) -> None:
        """Re-read the scrape-time facts unless read less than CACHE_SECONDS ago."""
        at = monotonic()
        if self._snapshot_at is not None and at - self._snapshot_at < CACHE_SECONDS:
            return
        self.snapshot = await database.read(lambda tx: snapshot(tx, now))
        self._snapshot_at = at

    def render(self) -> bytes:
        """The exposition text."""
        return prometheus_client.generate_latest(self.registry)
