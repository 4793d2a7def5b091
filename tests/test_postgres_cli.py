"""The operator's tools on a PostgreSQL URL (SPEC §14): every CLI command gives the same shape of
output on a URL as on a SQLite file, with the daemon running; `runnerd backup` writes a pg_dump
archive that `pg_restore` brings back into a fresh database a daemon then runs on."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, wait_until
from .test_postgres import PgDaemon

pytestmark = pytest.mark.timeout(240)  # two daemons, thirty commands each

EXPORT = Path(__file__).parent / "exports" / "error-reporter.json"

CONFIG = """
admin_token: t0ken
webhooks:
  - {name: orders, topic: user/orders/ready}
monitors:
  - {name: backup, period: 1h, grace: 10m}
tasks:
  - name: Counter
    subscriptions: user/orders/ready
    code: |
      {% action "cache", "incr", "orders" %}
      {% action "echo", id: event.data.id %}
  - name: Later
    subscriptions: user/later/run+1.hour
    code: '{% action "echo", "later" %}'
  - name: Job
    subscriptions: mechanic/user/trigger
    code: '{% if event.data == nil %}{% error "it broke" %}{% endif %}'
"""

#: Every command, after the same history on both engines (`_history`). ID_FAILED and
#: ID_SCHEDULED stand for the ids of the failed task run and the scheduled one.
COMMANDS: list[tuple[str, ...]] = [
    ("check",), ("check", "--json"),
    ("runs",), ("runs", "--json"), ("runs", "--kind", "action", "--state", "succeeded"),
    ("runs", "show", "ID_FAILED"), ("runs", "show", "ID_FAILED", "--json"),
    ("queue",), ("queue", "--json"), ("status",),
    ("cache", "set", "k", '{"a": 1}', "--json"), ("cache", "get", "k"),
    ("cache", "get", "orders", "--json"), ("cache", "del", "k", "--json"),
    ("monitors",), ("monitors", "--json"), ("monitors", "show", "backup"),
    ("monitors", "pause", "backup"), ("monitors", "resume", "backup"),
    ("monitor", "tasks", "--task", "Counter", "60", "--task", "Job", "60", "--no-mail",
     "--json"),
    ("workers",), ("workers", "--json"),
    ("preview", "Counter", "--data", '{"id": 9}', "--json"),
    ("import", str(EXPORT), "--json"),
    ("send", "user/orders/ready", "--data", '{"id": 2}', "--json"),
    ("trigger", "Job", "--json"),
    ("runs", "retry", "ID_FAILED", "--json"), ("runs", "cancel", "ID_SCHEDULED", "--json"),
    ("prune", "--json"),
]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z?")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def _shape(value: Any) -> Any:
    """What must be the same on both engines: the keys and the types of a JSON answer (the
    first element of a list standing for all), or a text's lines with the numbers, ids and
    times taken out and the columns' padding collapsed."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list", _shape(value[0]) if value else None]
    if isinstance(value, bool) or value is None:
        return value  # found, ok, deleted…: the same answer
    if isinstance(value, int | float):
        return "number"  # 3 or 3.0 or 2.5: a rounded age or lag is any of them on either engine
    return type(value).__name__


def _text_shape(text: str, d: Daemon) -> list[str]:
    text = text.replace(d.database, "DATABASE").replace(str(d.tmp), "TMP")
    out = []
    for line in text.splitlines():
        line = _NUMBER.sub("N", _TIME.sub("T", _UUID.sub("U", line)))
        out.append(" ".join(line.split()))
    return out


def _history(d: Daemon) -> dict[str, str]:
    """The same webhooks, a failed run and a scheduled one, on either engine: their ids."""
    for i in range(3):
        assert d.post_json("/webhooks/orders", {"id": i})[0] == 204
    assert d.cli("send", "user/later/run", check=True).returncode == 0
    assert d.cli("trigger", "Job", check=True).returncode == 0
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 6)
    d.wait_runs("kind = 'task' AND task_name = 'Job' AND state = 'failed'", 1)
    d.wait_runs("kind = 'task' AND task_name = 'Later' AND state = 'scheduled'", 1)
    [failed] = d.query("SELECT id FROM runs WHERE task_name = 'Job' AND state = 'failed'")
    [later] = d.query("SELECT id FROM runs WHERE task_name = 'Later'")
    assert d.request("GET", "/ping/backup")[0] == 200
    return {"ID_FAILED": str(failed["id"]), "ID_SCHEDULED": str(later["id"])}


def _answers(d: Daemon) -> list[tuple[tuple[str, ...], int, Any]]:
    ids = _history(d)
    out = []
    for command in COMMANDS:
        args = tuple(ids.get(a, a) for a in command)
        done = d.cli(*args)
        assert done.stderr.count("\n") <= 2, (args, done.stderr)
        try:
            shape = _shape(json.loads(done.stdout))
        except ValueError:
            shape = _text_shape(done.stdout, d)
        out.append((command, done.returncode, shape))
    return out


def test_every_command_answers_alike_on_a_url_and_on_a_file(
        make_daemon: Any, tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "lite").mkdir()
    (tmp_path / "pg").mkdir()
    lite = Daemon(tmp_path / "lite", CONFIG)
    pg = PgDaemon(tmp_path / "pg", CONFIG, pg_url)
    try:
        lite.start()
        pg.start()
        on_file, on_url = _answers(lite), _answers(pg)
    finally:
        for d in (lite, pg):
            if d.proc is not None and d.proc.poll() is None:
                d.kill()
    for (command, code, shape), (_, pg_code, pg_shape) in zip(on_file, on_url, strict=True):
        assert (code, shape) == (pg_code, pg_shape), command
        assert code == 0 or command[0] == "monitor", (command, code)


def test_backup_restores_into_a_fresh_database_a_daemon_runs_on(
        make_daemon: Any, postgres_server: Any, pg_url: str, tmp_path: Path) -> None:
    """docs/postgresql.md's restore, step by step: pg_restore --no-owner into a new database,
    then `runnerd run` on it lists the same runs and carries on from there."""
    d: PgDaemon = make_daemon(CONFIG, PgDaemon, url=pg_url).start()
    _history(d)
    archive = tmp_path / "runnerd.dump"
    assert d.cli("backup", str(archive)).returncode == 0
    before = json.loads(d.cli("runs", "--json", "--limit", "100", check=True).stdout)
    assert d.stop() == 0
    restored = postgres_server.new_database()
    subprocess.run(["pg_restore", "--no-owner", f"--dbname={restored}", str(archive)],
                   check=True, capture_output=True, timeout=60)
    d.pg_url = restored
    d.write_config(CONFIG)
    d.start()
    after = json.loads(d.cli("runs", "--json", "--limit", "100", check=True).stdout)
    assert [(r["id"], r["state"]) for r in after] == [(r["id"], r["state"]) for r in before]
    assert d.post_json("/webhooks/orders", {"id": 3})[0] == 204  # the sequences go on
    wait_until(lambda: d.cli("cache", "get", "orders").stdout.strip() == "4")
    assert d.stop() == 0
