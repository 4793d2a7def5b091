"""CLI conventions (issue 19, item 8): `-V`; usage errors exit 2 with one line everywhere;
`--json` on check, cache, import, backup and prune; progress lines on stderr for the long ones
when stderr is a terminal (a real pseudo-terminal here), never otherwise."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runnerd import __version__

from .conftest import Daemon

pytestmark = pytest.mark.timeout(90)

EXPORT = Path(__file__).parent / "exports" / "error-reporter.json"
CONFIG = """
tasks:
  - name: Job
    subscriptions: |
      mechanic/user/trigger
    code: |
      {% action "echo", ok: true %}
"""


def test_short_version_flag(make_daemon: Any) -> None:
    d: Daemon = make_daemon(CONFIG)
    for flag in ("-V", "--version"):
        out = subprocess.run([sys.executable, "-m", "runnerd", flag], capture_output=True,
                             text=True, timeout=30, check=True)
        assert out.stdout.strip() == f"runnerd {__version__}"
    assert d.cli("check", check=True).returncode == 0


@pytest.mark.parametrize("args", [
    ("runs", "show"), ("runs", "retry"), ("runs", "7"), ("cache", "set", "k"),
    ("cache", "get", "k", "v"), ("monitors", "pause"), ("monitors", "x"),
    ("monitor", "tasks", "--task", "Job", "soon"), ("monitor", "tasks", "--task", "Job", "0"),
    ("runs", "--limit", "x"), ("nope",),
])
def test_usage_errors_exit_2_with_one_line(make_daemon: Any, args: tuple[str, ...]) -> None:
    d: Daemon = make_daemon(CONFIG).create_database()
    out = d.cli(*args)
    assert out.returncode == 2, (args, out.stdout, out.stderr)
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--help" in out.stderr


def test_json_on_check_cache_import_backup_prune(make_daemon: Any, tmp_path: Path) -> None:
    d: Daemon = make_daemon(CONFIG).create_database()
    ok = json.loads(d.cli("check", "--json", check=True).stdout)
    assert ok["ok"] is True and ok["tasks"] == 1 and ok["database"] == d.database
    assert json.loads(d.cli("cache", "set", "k", '{"a": 1}', "--json", check=True).stdout) == \
        {"key": "k", "set": True, "ttl": 5184000}
    assert json.loads(d.cli("cache", "get", "k", "--json", check=True).stdout) == \
        {"key": "k", "found": True, "value": {"a": 1}}
    assert json.loads(d.cli("cache", "del", "k", "--json", check=True).stdout) == \
        {"key": "k", "deleted": True}
    missing = d.cli("cache", "get", "k", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["found"] is False
    imported = json.loads(d.cli("import", str(EXPORT), "--json", check=True).stdout)
    assert imported["file"] == str(EXPORT) and imported["yaml"].startswith("tasks:\n")
    target = tmp_path / "copy.db"
    backup = json.loads(d.cli("backup", str(target), "--json", check=True).stdout)
    assert backup["path"] == str(target) and backup["pages" if d.pg_url is None else "bytes"] > 0 and target.exists()
    pruned = json.loads(d.cli("prune", "--json", check=True).stdout)
    assert pruned["events_pruned"] == 0 and "monitor_pings_pruned" in pruned
    # A bad configuration is JSON too (and exit 1), the problems listed.
    d.write_config("tasks: [{name: X}]\n")
    bad = d.cli("check", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False
    assert json.loads(bad.stdout)["problems"]


def on_a_terminal(d: Daemon, *args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; (exit code, stdout, what the tty got)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "runnerd", *args, "-c", str(d.config)],
                              stdout=subprocess.PIPE, stderr=follower, text=True, timeout=30,
                              env=d.env, cwd=d.tmp)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.returncode, proc.stdout, b"".join(chunks).decode()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_progress_lines_on_a_terminal_only(make_daemon: Any, tmp_path: Path) -> None:
    d: Daemon = make_daemon(CONFIG).create_database()
    code, out, tty = on_a_terminal(d, "prune")
    assert code == 0 and out.startswith("pruned 0 event(s)")
    assert "runnerd: prune: applying retention (15 days, 90 with a failure)" in tty
    assert "runnerd: prune: 0 event(s), 0 run(s) so far" in tty
    code, out, tty = on_a_terminal(d, "backup", str(tmp_path / "b.db"))
    doing = "copying" if d.pg_url is None else "dumping"  # a pg_dump archive on PostgreSQL
    assert code == 0 and f"runnerd: backup: {doing} {d.database} " in tty
    # Not a terminal (cron, a pipe): no progress lines at all.
    quiet = d.cli("prune")
    assert quiet.returncode == 0 and quiet.stderr == ""
