"""Mechanic compatibility at the task level: options, previews, imports, Mechanic-style tasks,
and reloading the configuration under load."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from runnerd import daemon, errors, models

from .conftest import ROOT, Daemon, wait_until
from .test_pipeline import pipeline  # noqa: F401 - the fixture

EXPORTS = ROOT / "tests" / "exports"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"database: {tmp_path / 'x.db'}\n" + textwrap.dedent(body))
    return path


def test_required_option_referenced_in_code_must_be_set(tmp_path: Path) -> None:
    path = write(tmp_path, """
        tasks:
          - name: Mailer
            subscriptions: mechanic/user/trigger
            options: {count__number: "many"}
            code: '{% action "echo", options.recipient__email_required, options.count__number %}'
    """)
    with pytest.raises(errors.ConfigError) as info:
        daemon.load(str(path), {})
    text = "\n".join(info.value.problems)
    assert "task 'Mailer': option 'recipient__email_required' is required" in text
    assert "option 'count__number' must be a number" in text


def test_liquid_in_subscriptions_and_options(tmp_path: Path) -> None:
    path = write(tmp_path, """
        tasks:
          - name: Delayed
            options: {wait__boolean: true, days__number: 3, note: "{{ event.topic }}!"}
            subscriptions: |
              user/orders/paid{% if options.wait__boolean %}+{{ options.days__number }}.days{% endif %}
            code: '{% log options.note %}'
    """)
    reg = daemon.load(str(path), {})
    sub = reg.tasks["Delayed"].subscriptions[0]
    assert (sub.topic, str(sub.offset)) == ("user/orders/paid", "+3.days")
    assert reg.tasks["Delayed"].liquid_options == ("note",)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runnerd", *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


def test_preview_json(tmp_path: Path) -> None:
    path = write(tmp_path, """
        tasks:
          - name: Greeter
            subscriptions: user/people/arrived
            preview_events:
              - {topic: user/people/arrived, data: {name: Ada}}
            code: |
              {% if event.preview %}{% log "previewing" %}{% endif %}
              {% log cached: cache["anything"] %}
              {% action "echo", hello: event.data.name, __meta: "m1" %}
    """)
    out = cli("preview", "Greeter", "--json", "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "actions": [{"type": "echo", "options": {"hello": "Ada"}, "meta": "m1"}],
        "logs": ["previewing", {"cached": None}], "errors": []}
    other = cli("preview", "Greeter", "--json", "--data", '{"name": "Grace"}', "-c", str(path))
    assert json.loads(other.stdout)["actions"][0]["options"] == {"hello": "Grace"}
    data_file = tmp_path / "d.json"
    data_file.write_text('{"name": "Linus"}')
    third = cli("preview", "Greeter", "--json", "--data-file", str(data_file), "-c", str(path))
    assert json.loads(third.stdout)["actions"][0]["options"] == {"hello": "Linus"}
    assert not (tmp_path / "x.db").exists()  # previews touch no database


def test_preview_reports_errors_and_invalid_actions(tmp_path: Path) -> None:
    path = write(tmp_path, """
        tasks:
          - name: Broken
            subscriptions: user/a/b
            code: |
              {% action "cache", "set", "bad key!", 1 %}
              {% error "nope" %}
              {{ "x" | parse_json }}
    """)
    out = cli("preview", "Broken", "--json", "-c", str(path))
    assert out.returncode == 1
    errs = json.loads(out.stdout)["errors"]
    assert any("parse_json" in e for e in errs)
    assert cli("preview", "Nope", "-c", str(path)).stderr.strip() == "runnerd: no task named 'Nope'"


def test_import_of_a_mechanic_export(tmp_path: Path) -> None:
    out = cli("import", str(EXPORTS / "error-reporter.json"))
    assert out.returncode == 0, out.stderr
    converted = tmp_path / "tasks.yaml"
    converted.write_text(f"database: {tmp_path / 'x.db'}\n" + out.stdout)
    reg = daemon.load(str(converted), {})
    assert list(reg.tasks) == ["Error reporter"]
    assert reg.tasks["Error reporter"].topics == {"mechanic/errors/task",
                                                   "mechanic/errors/action"}


def test_import_refuses_shopify_only_tasks() -> None:
    out = cli("import", str(EXPORTS / "shopify-tagger.json"))
    assert out.returncode == 1
    assert "not supported: 'shopify/orders/create'" in out.stderr
    assert out.stderr.count("\n") == 1


def test_tasks_dir_loads_exports(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "reporter.json").write_text((EXPORTS / "error-reporter.json").read_text())
    path = write(tmp_path, "tasks_dir: ./tasks\n")
    assert list(daemon.load(str(path), {}).tasks) == ["Error reporter"]


async def test_error_reporter_with_fingerprints(pipeline) -> None:  # noqa: F811
    body = json.loads((EXPORTS / "error-reporter.json").read_text())
    p = await pipeline(f"""
        tasks:
          - name: Flaky
            subscriptions: user/a/b
            code: '{{% error "it broke" %}}'
          - name: Error reporter
            subscriptions: |
              mechanic/errors/task
              mechanic/errors/action
            code: {json.dumps(body["script"])}
    """)
    for _ in range(3):  # one after the other: concurrent renders would all read the old count
        await p.send("user/a/b")
        await p.drain()
    keys = await p.db.read(lambda tx: [r[0] for r in tx.conn.execute(
        "SELECT value FROM cache WHERE key LIKE 'error:%'")])
    assert keys == ["3"]  # one fingerprint, counted three times
    notified = [r for r in await p.runs(kind="action") if r.action_type == "echo"]
    assert len(notified) == 1  # thresholds 1, 10, 25…: only the first notifies


async def test_debounce_with_the_cache(pipeline) -> None:  # noqa: F811
    p = await pipeline("""
        tasks:
          - name: Debounced
            subscriptions: user/items/changed
            code: |
              {% assign key = "debounce:" | append: event.data.id %}
              {% if cache[key] %}{% log "skipped" %}{% break %}{% endif %}
              {% action "cache", "setex", key, 60, true %}
              {% action "echo", handled: event.data.id %}
    """)
    await p.send("user/items/changed", {"id": 1})
    await p.drain()
    await p.send("user/items/changed", {"id": 1})
    await p.send("user/items/changed", {"id": 2})
    await p.drain()
    handled = [r.options["handled"] for r in await p.runs(kind="action")
               if r.action_type == "echo"]
    assert handled == [1, 2]
    p.clock.advance(61)
    await p.send("user/items/changed", {"id": 1})
    await p.drain()
    assert len([r for r in await p.runs(kind="action") if r.action_type == "echo"]) == 3


async def test_option_values_rendered_per_event(pipeline) -> None:  # noqa: F811
    p = await pipeline("""
        tasks:
          - name: Templated
            subscriptions: user/a/b
            options: {subject: "Order {{ event.data.id }}", plain: "just text"}
            code: '{% action "cache", "set", "subject", options.subject %}'
    """)
    await p.send("user/a/b", {"id": 42})
    await p.drain()
    assert await p.cache("subject") == "Order 42"


RELOAD = """
webhooks:
  - {{name: hook, topic: user/load/ping}}
tasks:
  - name: Counter
    subscriptions: user/load/ping
    code: '{{% action "cache", "incr", "{key}" %}}'
"""


def test_sighup_reload_under_load_loses_nothing(make_daemon) -> None:
    d: Daemon = make_daemon(RELOAD.format(key="before")).start()
    accepted = []
    refused: list[int] = []  # asserted in the test's thread: an assert in `load` would be lost
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(accepted) < 400:
            status, headers, _ = d.post_json("/webhooks/hook", {"n": len(accepted)})
            if status != 204:
                refused.append(status)
                return
            accepted.append(headers["X-Request-Id"])

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_until(lambda: len(accepted) >= 50)
        d.write_config(RELOAD.format(key="after"))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in d.logs())
        wait_until(lambda: len(accepted) >= 150)
        d.write_config("tasks: [{name: x, code: '{% if %}'}]\n")  # invalid: rejected
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in d.logs())
        wait_until(lambda: len(accepted) >= 250)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert refused == []
    total = len(accepted)
    d.wait_runs("kind = 'action' AND state = 'succeeded'", total, timeout=30)
    before = int(d.cli("cache", "get", "before").stdout or 0)
    after = int(d.cli("cache", "get", "after").stdout or 0)
    assert before > 0 and after > 0
    assert before + after == total  # every accepted event counted once, old or new code
    assert d.query("SELECT COUNT(*) FROM runs WHERE state != 'succeeded'")[0][0] == 0
    assert d.stop() == 0


def test_import_of_an_export_with_empty_required_options(tmp_path: Path) -> None:
    # Mechanic's library exports ship required options empty: imported, but disabled
    out = cli("import", str(EXPORTS / "reminder-empty-options.json"))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().endswith(
        "task 'Daily reminder' is disabled until its required options are filled: "
        "recipient__email_required, subject__required (under options:, then set enabled: true)")
    assert out.stdout.startswith("# task 'Daily reminder' is disabled")
    converted = tmp_path / "tasks.yaml"
    converted.write_text(f"database: {tmp_path / 'x.db'}\n" + out.stdout)
    reg = daemon.load(str(converted), {})
    task = reg.tasks["Daily reminder"].task
    assert task.enabled is False
    assert task.options["repeat__number"] == 3  # a number given as text is a number
    assert reg.notes == ["tasks[0]: task 'Daily reminder': disabled until its required "
                         "options are filled: recipient__email_required, subject__required "
                         "(under options:, then set enabled: true)"]
    checked = cli("check", "-c", str(converted))
    assert checked.returncode == 0, checked.stderr
    assert "note: " in checked.stdout and "recipient__email_required" in checked.stdout
    # filled in and enabled, it loads with no note; enabled but empty, it is an error
    filled = out.stdout.replace("recipient__email_required: null",
                                "recipient__email_required: a@example.com").replace(
        "subject__required: null", "subject__required: Hello").replace(
        "enabled: false", "enabled: true")
    converted.write_text(f"database: {tmp_path / 'x.db'}\n" + filled)
    reg = daemon.load(str(converted), {})
    assert reg.tasks["Daily reminder"].task.enabled and reg.notes == []
    converted.write_text(f"database: {tmp_path / 'x.db'}\n" + out.stdout.replace(
        "enabled: false", "enabled: true"))
    with pytest.raises(errors.ConfigError, match="'recipient__email_required' is required"):
        daemon.load(str(converted), {})


def test_check_finds_unknown_filters_and_action_types_without_running(tmp_path: Path) -> None:
    path = write(tmp_path, """
        tasks:
          - name: Static
            subscriptions: user/a/b
            code: |
              {% permissions %}
              read_orders, {{ shop.domain | nothing }}
              {% endpermissions %}
              {% assign x = "a" | upcase | shoutify %}
              {% log v: x | shopify, w: 1 %}
              {% if x %}{% action "htp", url: "x" %}{% endif %}
              {% action "http" %}{"method": "get", "url": "http://127.0.0.1:1/"}{% endaction %}
              {% for i in (1..2) %}{{ i | nope: 1 }}{% endfor %}
              {% action kind, url: "x" %}
    """)
    out = cli("check", "-c", str(path))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "runnerd: config: tasks[0]: task 'Static': line 4: unknown filter 'shoutify'",
        "runnerd: config: tasks[0]: task 'Static': line 5: needs Shopify: the 'shopify' filter",
        "runnerd: config: tasks[0]: task 'Static': line 6: unknown action type 'htp' (known: "
        "cache, echo, email, event, http)",
        "runnerd: config: tasks[0]: task 'Static': line 8: unknown filter 'nope'"]


def test_permissions_block_is_accepted_and_never_rendered(tmp_path: Path) -> None:
    path = write(tmp_path, """
        tasks:
          - name: Scoped
            subscriptions: user/a/b
            code: |
              {% permissions %}
                read_orders
                {% assign scope = "write_products" %}{{ scope | upcase }}
              {% endpermissions %}
              {% log scope %}
    """)
    out = cli("preview", "Scoped", "--json", "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["logs"] == [None]  # the block's assign never ran
    unclosed = write(tmp_path, """
        tasks:
          - name: Open
            subscriptions: user/a/b
            code: "{% permissions %}read_orders"
    """)
    assert "missing {% endpermissions %}" in cli("check", "-c", str(unclosed)).stderr


def test_an_export_in_tasks_dir_with_empty_required_options_loads_disabled(
        tmp_path: Path) -> None:
    """tasks_dir loads Mechanic's library exports as they are: their empty required options
    disable the task (with a note naming them), instead of refusing the whole configuration."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(EXPORTS / "reminder-empty-options.json", tasks)
    path = tmp_path / "runnerd.yaml"
    path.write_text(f"database: {tmp_path / 'x.db'}\ntasks_dir: {tasks}\n")
    reg = daemon.load(str(path), {})
    assert reg.tasks["Daily reminder"].task.enabled is False
    (note,) = reg.notes
    assert note.endswith("disabled until its required options are filled: "
                         "recipient__email_required, subject__required (its \"options\" in "
                         "the export, or import it into tasks: with 'runnerd import')"), note
    checked = cli("check", "-c", str(path))
    assert checked.returncode == 0 and "recipient__email_required" in checked.stdout, checked


# --- task.created_at: when the daemon first saw the task (platform/liquid/objects/task.md) ---

CREATED = """
tasks:
  - name: {name}
    subscriptions: user/created/{topic}
    code: '{{% action "echo", created: task.created_at, id: task.id %}}'
"""


FAILING = """
  - name: Failing
    subscriptions: user/created/fail
    code: '{% error "on purpose" %}'
  - name: Reporter
    subscriptions: mechanic/errors/task
    code: '{% action "echo", created: error.task.created_at %}'
"""


async def test_first_seen_records_new_names_and_keeps_the_others(database) -> None:
    from runnerd.queue import taskstatus

    first = await database.write(lambda tx: taskstatus.first_seen(tx, ["A", "B"], 100.0))
    assert first == {"A": 100.0, "B": 100.0}
    later = await database.write(lambda tx: taskstatus.first_seen(tx, ["A", "C"], 200.0))
    assert later == {"A": 100.0, "C": 200.0}


def _created(d: Daemon, topic: str, count: int) -> list[str]:
    assert d.cli("send", f"user/created/{topic}").returncode == 0
    d.wait_runs("action_type = 'echo' AND state = 'succeeded'", count, timeout=10)
    rows = d.query("SELECT result FROM runs WHERE action_type = 'echo' AND state = 'succeeded'"
                   " ORDER BY id")
    return [json.loads(r["result"])["created"] for r in rows]


def test_task_created_at_survives_restarts_and_reloads_a_renamed_task_is_new(make_daemon) -> None:
    d: Daemon = make_daemon(CREATED.format(name="Original", topic="one")).start()
    [created] = _created(d, "one", 1)
    [(recorded,)] = d.query("SELECT created_at FROM task_status WHERE name = 'Original'")
    assert created == models.iso(recorded)  # ISO 8601, as event.created_at
    assert d.stop() == 0
    d.start()
    assert _created(d, "one", 2)[1] == created  # a restart keeps it
    d.write_config(CREATED.format(name="Original", topic="one")
                   + CREATED.format(name="Renamed", topic="two").split("tasks:\n", 1)[1]
                   + FAILING)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in d.logs())
    assert _created(d, "one", 3)[2] == created  # a reload keeps it
    renamed = _created(d, "two", 4)[3]
    assert renamed is not None and renamed > created  # a new name: a new task
    # an error event's task has it too (platform/error-handling.md)
    assert d.cli("send", "user/created/fail").returncode == 0
    d.wait_runs("action_type = 'echo' AND state = 'succeeded'", 5, timeout=10)
    [(failing,)] = d.query("SELECT created_at FROM task_status WHERE name = 'Failing'")
    [row] = d.query("SELECT result FROM runs WHERE task_name = 'Reporter' AND kind = 'action'")
    assert json.loads(row["result"])["created"] == models.iso(failing)
    assert d.stop() == 0
