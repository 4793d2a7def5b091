"""Event filters (`event_filters:`) and mechanic/errors/event, as Mechanic's documentation has
them (platform/events/filters.md, platform/error-handling.md, techniques/debouncing-events.md):
Liquid rendered for each event before it reaches any task; the output `false` skips the event;
a filter that fails fails the event run and raises mechanic/errors/event, which only tasks
subscribed to error topics alone receive."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runnerd import actions, daemon, errors, models
from runnerd.engine import run_kinds
from runnerd.queue import runs
from runnerd.store import cache, db
from runnerd.tasks import registry

from .conftest import Daemon
from .test_postgres import pg_daemon  # noqa: F401 - the fixture

NOW = 1_750_000_000.0


def load(tmp_path: Path, body: str) -> registry.Registry:
    path = tmp_path / "runnerd.yaml"
    path.write_text(f"database: {tmp_path / 'runnerd.db'}\n" + textwrap.dedent(body))
    return daemon.load(str(path), {})


def problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(errors.ConfigError) as caught:
        load(tmp_path, body)
    return caught.value.problems


TASK = """
tasks:
  - name: Seer
    subscriptions: user/foo/bar
    code: '{% log "seen" %}'
"""


# --- configuration ---------------------------------------------------------------------------

def test_event_filters_are_validated_at_load_one_line_per_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, TASK + """
event_filters:
  - {name: syntax, code: "{% if %}"}
  - {name: unknown, code: "{{ event.topic | nope }}"}
  - {name: syntax, code: "true"}
  - {code: "false"}
  - "false"
  - {name: extra, code: "", when: 1}
""")
    assert any(p.startswith("event_filters[0]: event filter 'syntax': line 1:") for p in found)
    assert "event_filters[1]: event filter 'unknown': line 1: unknown filter 'nope'" in found
    assert "event_filters[2].name: duplicate event filter name 'syntax'" in found
    assert any(p.startswith("event_filters[3]: needs a name and code") for p in found)
    assert "event_filters[4]: expected a mapping, got 'false'" in found
    assert any(p.startswith("event_filters[5]") and "when" in p for p in found)


def test_a_subscription_to_mechanic_errors_event_is_accepted(tmp_path: Path) -> None:
    reg = load(tmp_path, """
tasks:
  - name: Reporter
    subscriptions: mechanic/errors/event
    code: '{{ error.message }}'
""")
    assert reg.tasks["Reporter"].topics == {"mechanic/errors/event"}


# --- routing: the filters' verdicts ---------------------------------------------------------

async def route(database: db.Database, reg: registry.Registry,
                event: models.Event) -> tuple[list[str], list[dict[str, Any]]]:
    handlers = run_kinds.Handlers(lambda: reg, actions.Registry(), reader=None,
                                  clock=lambda: NOW)
    return await database.write(lambda tx: handlers.route(tx, event, NOW))


def event(topic: str = "user/foo/bar", data: Any = None) -> models.Event:
    return runs.new_event(topic, data, "cli", NOW)


async def test_false_skips_the_event_anything_else_lets_it_through(
        database: db.Database, tmp_path: Path) -> None:
    reg = load(tmp_path, TASK + """
event_filters:
  - name: empty
    code: "{% comment %}no output: the event goes on{% endcomment %}"
  - name: skip odd
    code: |
      {% assign odd = event.data.n | modulo: 2 %}
      {% if odd == 1 %}
        false
      {% else %}
        true
      {% endif %}
""")
    assert (await route(database, reg, event(data={"n": 2})))[0] == ["Seer"]
    with pytest.raises(runs.NotRouted) as skipped:
        await route(database, reg, event(data={"n": 3}))
    assert skipped.value.error is None and skipped.value.events == []
    assert json.loads(skipped.value.result or "") == {"tasks": [], "skipped_by": "skip odd"}
    assert skipped.value.state == "succeeded"


async def test_a_filter_reads_the_cache_of_the_routing_transaction(
        database: db.Database, tmp_path: Path) -> None:
    # techniques/debouncing-events.md: skip while a cached flag is set
    reg = load(tmp_path, TASK + """
event_filters:
  - name: debounce
    code: '{% if event.topic == "user/foo/bar" and cache.foobar_received %}false{% endif %}'
""")
    assert (await route(database, reg, event()))[0] == ["Seer"]
    await database.write(lambda tx: cache.put(tx, "foobar_received", True, 10, NOW))
    with pytest.raises(runs.NotRouted):
        await route(database, reg, event())


async def test_a_failing_filter_fails_the_event_run_with_an_error_event(
        database: db.Database, tmp_path: Path) -> None:
    reg = load(tmp_path, TASK + """
event_filters:
  - {name: broken, code: "{{ event.data.n | divided_by: 0 }}"}
""")
    failed = event(data={"n": 1})
    with pytest.raises(runs.NotRouted) as caught:
        await route(database, reg, failed)
    halt = caught.value
    assert halt.state == "failed" and halt.error is not None
    assert halt.error.startswith("event filter 'broken': line 1: filter 'divided_by':")
    [raised] = halt.events
    assert raised.topic == "mechanic/errors/event" and raised.parent_id == failed.id
    assert raised.data["message"] == halt.error
    assert raised.data["event"]["id"] == failed.id
    assert raised.data["event"]["topic"] == "user/foo/bar"
    assert raised.data["event_filter"] == {"name": "broken"}
    # the error event itself is never filtered: a filter failing on everything would hide it
    assert await route(database, reg, raised) == ([], [])


# --- through a real daemon -------------------------------------------------------------------

DAEMON = """
event_filters:
  - name: skip quiet
    code: '{% if event.data.quiet or cache.hold %}false{% endif %}'
  - name: needs a number
    code: '{{ 10 | divided_by: event.data.n }}'
tasks:
  - name: Worker
    subscriptions: user/work/item
    code: '{% action "echo", n: event.data.n %}'
  - name: Worker errors
    subscriptions: |
      user/work/other
      mechanic/errors/event
    code: '{% action "echo", got: event.topic %}'
  - name: Reporter
    subscriptions: mechanic/errors/event
    code: |
      {% action "echo", message: error.message, topic: error.event.topic,
         data: error.event.id, filter: error.event_filter.name %}
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_filters_skip_and_fail_events_and_raise_mechanic_errors_event(
        request: pytest.FixtureRequest, backend: str) -> None:
    d: Daemon = (request.getfixturevalue("make_daemon")(DAEMON) if backend == "sqlite"
                 else request.getfixturevalue("pg_daemon")(DAEMON)).start()
    for data in ({"n": 2}, {"n": 0}, {"n": 0, "quiet": True}):
        assert d.cli("send", "user/work/item", "--data", json.dumps(data)).returncode == 0
    d.wait_runs("action_type = 'echo' AND state = 'succeeded'", 2, timeout=10)
    d.wait_runs("kind = 'event' AND state IN ('succeeded', 'failed')", 4, timeout=10)
    rows = [dict(r) for r in d.query(
        "SELECT r.kind, r.state, r.error, r.result, r.task_name, e.topic, e.data, e.id"
        " FROM runs r JOIN events e ON e.id = r.event_id ORDER BY r.id")]
    event_runs = {(r["topic"], r["data"]): r for r in rows if r["kind"] == "event"}
    passed = event_runs[("user/work/item", '{"n":2}')]
    assert passed["state"] == "succeeded" and json.loads(passed["result"]) == {"tasks": ["Worker"]}
    quiet = event_runs[("user/work/item", '{"n":0,"quiet":true}')]
    assert quiet["state"] == "succeeded"
    assert json.loads(quiet["result"]) == {"tasks": [], "skipped_by": "skip quiet"}
    broken = event_runs[("user/work/item", '{"n":0}')]
    assert broken["state"] == "failed"
    assert broken["error"].startswith("event filter 'needs a number': line 1:")
    echoes = [json.loads(r["result"]) for r in rows
              if r["kind"] == "action" and r["state"] == "succeeded"]
    assert {"n": 2} in echoes
    # only the task subscribed to error topics alone receives it (platform/error-handling.md)
    assert {r["task_name"] for r in rows if r["kind"] == "task"} == {"Worker", "Reporter"}
    [reported] = [e for e in echoes if "message" in e]
    assert reported == {"message": broken["error"], "topic": "user/work/item",
                        "data": broken["id"], "filter": "needs a number"}
    assert d.stop() == 0
