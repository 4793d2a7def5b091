"""Prometheus metrics for GET /metrics, in a registry of the daemon's own (not the global one).

Counted as things happen, in plain counters (a few dictionary additions per run, and
prometheus_client is imported only at the first scrape, not at start-up): runs finished (the
worker's `on_finished` hook) with their durations, and webhook requests by status code (the
listener's `on_webhook` hook). Read at scrape time, cached for `CACHE_SECONDS`: queue depth and lag
(partial-index queries only, so history costs nothing), events created by source (the
`event_counts` table a trigger keeps, so CLI events count and pruning never lowers it), worker
health, the scheduler's last ticks, and from `task_status` each monitor's state and latest report
and each task's latest success (the task's work: its task run and its action runs).

With several nodes on one PostgreSQL database each node serves its own /metrics: the counters
are that node's, the queue gauges (and events, monitors, tasks) the whole database's, so alert
rules aggregate them with `max`, not `sum`; `runnerd_node_info{node,leader}` names the node.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from runnerd import models
from runnerd.queue import runs
from runnerd.store import db

#: Run durations: from a cache write (ms) to a slow HTTP call or a long render (minutes).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
           60.0, 120.0, 300.0, 900.0)
CACHE_SECONDS = 2.0
QUEUE_STATES = ("scheduled", "due", "started")
FINAL_STATES = ("succeeded", "failed")
#: The classic text format (what generate_latest writes), understood by every Prometheus.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def snapshot(tx: db.Tx, now: float) -> dict[str, Any]:
    """What the scrape-time gauges need, in one read."""
    queue = {(k.value, s): 0 for k in models.RunKind for s in QUEUE_STATES}
    for row in tx.all("queue_counts"):
        queue[(row["kind"], row["state"])] = row["n"]
    lag = runs.queue_lag(tx, now)
    events = {row["source"]: row["n"] for row in tx.all("event_counts")}
    monitors, successes = {}, {}
    for row in tx.all("status_metrics"):
        if row["monitored"]:
            monitors[row["name"]] = (row["state"] == "up", row["last_run_at"])
        if row["is_task"] and row["last_success_at"] is not None:
            successes[row["name"]] = row["last_success_at"]
    return {"queue": queue, "lag": lag, "events": events, "monitors": monitors,
            "task_successes": successes}


class _Histogram:
    """Observations per bucket (the last one is +Inf), their count and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1  # `le` bounds are inclusive
        self.sum += value

    def buckets(self, extra_zeros: int = 0) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs, with `extra_zeros` more observations of 0 s."""
        out, total = [], extra_zeros
        for le, n in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            total += n
            out.append((le, total))
        return out


class Metrics:
    """The daemon's counters, and the collector that exposes them with the scrape-time facts."""

    def __init__(self, *, node: str = "", is_leader: Callable[[], bool] = lambda: True) -> None:
        self.node = node  #: this node's name (runnerd_node_info)
        self.is_leader = is_leader
        #: scrape-time facts given to `render`: is the daemon healthy, the scheduler's last ticks
        self.healthy = True
        self.last_ticks: Mapping[str, float] = {}
        kinds = [k.value for k in models.RunKind]
        self._runs = {(kind, state): 0 for kind in kinds for state in FINAL_STATES}
        self._durations = {kind: _Histogram() for kind in kinds}
        self._webhooks: dict[str, int] = {}
        #: event runs routed by the ingest and the worker (`routed`, once committed)
        self._routed = 0
        self.snapshot: dict[str, Any] = {}
        self._snapshot_at: float | None = None
        self._registry: Any = None

    def finished(self, outcomes: Sequence[runs.Outcome]) -> None:
        """The worker's hook: count final outcomes (automatic retries are not final)."""
        for outcome in outcomes:
            run = outcome.run
            if not outcome.ok and outcome.retryable and run.attempts < runs.MAX_ATTEMPTS:
                continue
            kind = run.kind.value
            self._runs[kind, "succeeded" if outcome.ok else "failed"] += 1
            if run.started_at is not None and outcome.finished_at:
                self._durations[kind].observe(max(0.0, outcome.finished_at - run.started_at))

    def routed(self, event_runs: int) -> None:
        """Event runs routed in a committed transaction (`runs.insert_events`,
        `runs.route_due`): each succeeded in no time."""
        self._routed += event_runs

    def webhook(self, code: int) -> None:
        """The listener's hook: one webhook request answered with `code`."""
        key = str(code)
        self._webhooks[key] = self._webhooks.get(key, 0) + 1

    async def refresh(self, database: db.Database, now: float, *,
                      monotonic: Callable[[], float] = time.monotonic) -> None:
        """Re-read the scrape-time facts unless read less than CACHE_SECONDS ago."""
        at = monotonic()
        if self._snapshot_at is not None and at - self._snapshot_at < CACHE_SECONDS:
            return
        self.snapshot = await database.read(lambda tx: snapshot(tx, now))
        self._snapshot_at = at

    def render(self, *, healthy: bool, last_ticks: Mapping[str, float]) -> bytes:
        """The exposition text, with the scrape-time facts: is the daemon healthy (/health), and
        when each scheduler topic last fired."""
        import prometheus_client  # first scrape only: ~20 ms that start-up need not pay

        self.healthy, self.last_ticks = healthy, last_ticks
        if self._registry is None:
            self._registry = prometheus_client.CollectorRegistry(auto_describe=True)
            self._registry.register(self)
        return prometheus_client.generate_latest(self._registry)

    def collect(self) -> Iterator[Any]:
        """Every family (prometheus_client's collector protocol)."""
        from prometheus_client import core

        routed = self._routed
        event = models.RunKind.EVENT.value
        counts = core.CounterMetricFamily("runnerd_runs", "Runs that reached a final state",
                                          labels=["kind", "state"])
        for (kind, state), n in self._runs.items():
            counts.add_metric([kind, state], n + (routed if (kind, state) == (event, "succeeded")
                                                  else 0))
        yield counts
        durations = core.HistogramMetricFamily("runnerd_run_duration_seconds",
                                               "Time from a run's start to its end",
                                               labels=["kind"])
        for kind, hist in self._durations.items():
            zeros = routed if kind == event else 0
            durations.add_metric([kind], hist.buckets(zeros), hist.sum)
        yield durations
        webhooks = core.CounterMetricFamily("runnerd_webhook_requests",
                                            "Webhook requests answered, by status code",
                                            labels=["code"])
        for code, n in sorted(self._webhooks.items()):
            webhooks.add_metric([code], n)
        yield webhooks
        snap = self.snapshot
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
        info = core.GaugeMetricFamily(
            "runnerd_node_info", "This node (1); leader is 1 on the node that runs recovery and "
            "retention", labels=["node", "leader"])
        info.add_metric([self.node, "1" if self.is_leader() else "0"], 1.0)
        yield info
        yield core.GaugeMetricFamily("runnerd_worker_healthy",
                                     "1 when the daemon is healthy (see /health)",
                                     value=1.0 if self.healthy else 0.0)
        ticks = core.GaugeMetricFamily("runnerd_scheduler_last_tick_timestamp_seconds",
                                       "When each scheduler topic last fired (Unix time)",
                                       labels=["topic"])
        for topic, at in sorted(self.last_ticks.items()):
            ticks.add_metric([topic], at)
        yield ticks
        yield from _status_families(snap)


def _status_families(snap: Mapping[str, Any]) -> Iterator[Any]:
    """Per monitor: up, and its latest report (a ping, or its task's work); per task: its
    latest success."""
    from prometheus_client import core

    up = core.GaugeMetricFamily("runnerd_monitor_up", "1 when the monitor is up, 0 otherwise",
                                labels=["monitor"])
    pinged = core.GaugeMetricFamily("runnerd_monitor_last_ping_timestamp_seconds",
                                    "The monitor's latest ping or task report (Unix time)",
                                    labels=["monitor"])
    for name, (is_up, last) in sorted(snap.get("monitors", {}).items()):
        up.add_metric([name], 1.0 if is_up else 0.0)
        if last is not None:
            pinged.add_metric([name], last)
    yield up
    yield pinged
    success = core.GaugeMetricFamily("runnerd_task_last_success_timestamp_seconds",
                                     "When the task's work (task run and action runs) last "
                                     "succeeded (Unix time)", labels=["task"])
    for name, at in sorted(snap.get("task_successes", {}).items()):
        success.add_metric([name], at)
    yield success
