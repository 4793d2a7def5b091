"""GET /metrics: the exposition parses, every family is there, counters move (the real daemon)."""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import parser

from runnerd import models
from runnerd.monitoring import metrics
from runnerd.queue import runs

from .conftest import Daemon, scrape, value, wait_until

CONFIG = """
webhooks:
  - {name: orders, topic: user/orders/ready}
tasks:
  - name: Counter
    subscriptions: |
      user/orders/ready
    code: |
      {% action "cache", "incr", "orders" %}
"""


def test_metrics_parse_and_counters_move(make_daemon) -> None:
    d: Daemon = make_daemon(CONFIG).start()
    before = scrape(d)
    for name in ("runnerd_runs", "runnerd_run_duration_seconds", "runnerd_queue_runs",
                 "runnerd_queue_lag_seconds", "runnerd_worker_healthy", "runnerd_events",
                 "runnerd_webhook_requests", "runnerd_scheduler_last_tick_timestamp_seconds"):
        assert name in before, name
    assert value(before, "runnerd_runs", "runnerd_runs_total", kind="action",
                 state="succeeded") == 0
    assert value(before, "runnerd_worker_healthy", "runnerd_worker_healthy") == 1
    assert value(before, "runnerd_queue_runs", "runnerd_queue_runs", kind="task",
                 state="due") == 0
    assert d.post_json("/webhooks/orders", {"n": 1})[0] == 204
    assert d.post_json("/webhooks/nope", {})[0] == 404
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 1)

    def moved() -> dict[str, Any] | None:
        f = scrape(d)  # the queue/events snapshot is cached for 2 s: wait for the next one
        try:
            ok = value(f, "runnerd_events", "runnerd_events_total", source="webhook") == 1
        except KeyError:
            return None
        return f if ok and value(f, "runnerd_runs", "runnerd_runs_total", kind="action",
                                 state="succeeded") == 1 else None

    after = wait_until(moved, timeout=10, interval=0.2)
    assert value(after, "runnerd_webhook_requests", "runnerd_webhook_requests_total",
                 code="204") == 1
    assert value(after, "runnerd_webhook_requests", "runnerd_webhook_requests_total",
                 code="404") == 1
    for kind in ("event", "task", "action"):
        assert value(after, "runnerd_runs", "runnerd_runs_total", kind=kind,
                     state="succeeded") == 1
        assert value(after, "runnerd_run_duration_seconds", "runnerd_run_duration_seconds_count",
                     kind=kind) == 1
        assert value(after, "runnerd_run_duration_seconds", "runnerd_run_duration_seconds_bucket",
                     kind=kind, le="+Inf") == 1
    assert value(after, "runnerd_queue_lag_seconds", "runnerd_queue_lag_seconds") == 0
    assert d.stop() == 0


def outcome(kind: models.RunKind, ok: bool, attempts: int, retryable: bool) -> runs.Outcome:
    run = models.Run(id=1, kind=kind, state=models.RunState.STARTED, priority=1, run_at=0.0,
                     event_id="e", task_name=None, action_type=None, options=None, meta=None,
                     perform_event=True, result=None, error=None, attempts=attempts,
                     created_at=0.0, started_at=10.0, finished_at=None)
    return runs.Outcome(run, ok=ok, retryable=retryable, finished_at=12.5)


def test_only_final_outcomes_count() -> None:
    m = metrics.Metrics()
    m.finished([outcome(models.RunKind.ACTION, False, 1, True),  # an automatic retry: not final
                outcome(models.RunKind.ACTION, False, runs.MAX_ATTEMPTS, True),
                outcome(models.RunKind.TASK, True, 1, False)])
    m.webhook(413)
    text = m.render(healthy=False, last_ticks={"mechanic/scheduler/10min": 5}).decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert value(families, "runnerd_runs", "runnerd_runs_total", kind="action",
                 state="failed") == 1
    assert value(families, "runnerd_runs", "runnerd_runs_total", kind="task",
                 state="succeeded") == 1
    assert value(families, "runnerd_run_duration_seconds", "runnerd_run_duration_seconds_sum",
                 kind="task") == 2.5
    assert value(families, "runnerd_worker_healthy", "runnerd_worker_healthy") == 0
    assert value(families, "runnerd_scheduler_last_tick_timestamp_seconds",
                 "runnerd_scheduler_last_tick_timestamp_seconds",
                 topic="mechanic/scheduler/10min") == 5
    assert value(families, "runnerd_webhook_requests", "runnerd_webhook_requests_total",
                 code="413") == 1


def test_bucket_bounds_are_inclusive_and_routed_event_runs_count() -> None:
    m = metrics.Metrics()
    edge = outcome(models.RunKind.ACTION, True, 1, False)  # started 10.0, finished 12.5
    on_bound = dataclasses.replace(edge.run, started_at=0.0)
    m.finished([edge, runs.Outcome(on_bound, ok=True, finished_at=metrics.BUCKETS[0])])
    m.routed(2)  # event runs routed by the ingest's or the worker's transaction
    text = m.render(healthy=True, last_ticks={}).decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}

    def bucket(kind: str, le: str) -> float:
        return value(families, "runnerd_run_duration_seconds",
                     "runnerd_run_duration_seconds_bucket", kind=kind, le=le)

    assert bucket("action", "0.001") == 1  # exactly on the bound: counted in it
    assert bucket("action", "1.0") == 1 and bucket("action", "2.5") == 2
    assert bucket("action", "+Inf") == 2
    assert bucket("event", "0.001") == 2 and bucket("event", "+Inf") == 2
    assert value(families, "runnerd_runs", "runnerd_runs_total", kind="event",
                 state="succeeded") == 2
