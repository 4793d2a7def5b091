"""Backups: `runnerd backup PATH` while the daemon takes a steady webhook load gives a consistent,
current copy a daemon can run on; bad targets fail with one line and leave nothing behind; what
a backup killed part-way left is removed by the next backup or the daemon's start."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import procs
from runnerd.store import sql

from ..conftest import Daemon, require
from .helpers import Loader, orders_config, tmpfs, wait_for

#: SQLite's online copy; the pg_dump archive and its restore: test_postgres*.py.
pytestmark = pytest.mark.sqlite_only("SQLite's online file copy")

HOOKS = orders_config('{% action "echo", i: event.data.i %}')

SCHEMA_VERSION = max(number for number, _, _ in sql.migrations())


def check_copy(path: Path, acked: list[str]) -> int:
    """The copy is sound, current, standalone and holds every acknowledged event; its event
    count."""
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-journal").exists()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        stored = {r[0] for r in conn.execute(
            "SELECT webhook_request_id FROM events WHERE webhook_request_id IS NOT NULL")}
        missing = [rid for rid in acked if rid not in stored]
        assert not missing, f"{len(missing)} acknowledged events missing from the copy"
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_backup_under_webhook_load_is_consistent_and_runs(make_daemon, tmp_path: Path) -> None:
    d: Daemon = make_daemon(HOOKS)
    # ~10 MiB of history: far over the 1024 pages a stepwise backup copies between restarts.
    procs.make_history(d.db_path, 30_000, now=time.time() - 86400)
    d.start()
    loader = Loader(d.port, body_size=300).start()
    copies: list[tuple[Path, int]] = []
    try:
        for i in (1, 2):
            wait_for(lambda n=50 * i: len(loader.accepted) >= n, message="webhook load")
            acked = list(loader.accepted)  # every 204 answered before the backup starts
            target = tmp_path / "backups" / f"runnerd-{i}.db"
            target.parent.mkdir(exist_ok=True)
            out = d.cli("backup", str(target))
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith(f"backed up {d.db_path} to {target} ("), out.stdout
            copies.append((target, check_copy(target, acked)))
            assert len(loader.accepted) > len(acked) or i == 2, "load went on during the backup"
    finally:
        loader.stop()
    report = f"statuses={loader.statuses} copies={[(p.name, n) for p, n in copies]}"
    print(report)
    assert set(loader.statuses) == {204}, report
    assert copies[1][1] > copies[0][1], report
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == [
        "runnerd-1.db", "runnerd-2.db"], "no partial or journal file left"
    assert d.stop() == 0

    # A daemon started on the second copy works: it finishes what was queued when the copy was
    # taken, and takes and runs a new webhook.
    restored: Daemon = make_daemon(HOOKS)
    restored.db_path = copies[1][0]
    restored.write_config(HOOKS)
    restored.start()
    status, _, _ = restored.post_json("/webhooks/orders", {"i": "after-restore"})
    assert status == 204
    restored.wait_runs("kind = 'action' AND state = 'succeeded' AND json_extract(result, '$.i') "
                       "= 'after-restore'", 1)
    wait_for(lambda: restored.query("SELECT COUNT(*) FROM runs WHERE state IN "
                                    "('due', 'started')")[0][0] == 0, message="queue drained")
    assert restored.stop() == 0


def _database(tmp_path: Path) -> tuple[Daemon, Path]:
    """A config and a migrated database with a little data (no daemon running)."""
    d = Daemon(tmp_path, HOOKS).create_database()
    return d, d.db_path


def _fails_with_one_line(d: Daemon, target: Path, words: str) -> None:
    out = d.cli("backup", str(target))
    assert out.returncode == 1, out
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("runnerd: ") and words in out.stderr, out.stderr


def test_backup_refuses_bad_targets_with_one_line(tmp_path: Path) -> None:
    d, _ = _database(tmp_path)
    _fails_with_one_line(d, tmp_path / "nowhere" / "b.db", "no directory")
    assert not (tmp_path / "nowhere").exists()
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    _fails_with_one_line(d, existing, "exists")
    assert existing.read_bytes() == b"keep me"
    _fails_with_one_line(d, tmp_path, "exists")  # a directory is not a new file either
    (tmp_path / "other").mkdir()
    gone = Daemon(tmp_path / "other", HOOKS)  # its database was never created
    _fails_with_one_line(gone, tmp_path / "b.db", "does not exist (start the daemon")
    assert not (tmp_path / "b.db").exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, or a skip where mounting is not permitted (not root, no CAP_SYS_ADMIN; a failure in CI)."""
    try:
        with tmpfs(tmp_path / "fs", "1m") as path:
            yield path
    except PermissionError as exc:
        require(False, f"cannot mount a tmpfs here: {exc}")


def test_backup_to_a_full_or_read_only_disk_leaves_nothing(tmp_path: Path,
                                                           small_fs: Path) -> None:
    d, source = _database(tmp_path)
    procs.make_history(source, 9_000)  # ~3 MiB: more than the 1 MiB file system holds
    _fails_with_one_line(d, small_fs / "b.db", "backup failed")
    assert list(small_fs.iterdir()) == [], "a partial copy was left behind"
    assert os.system(f"mount -o remount,ro {small_fs}") == 0
    _fails_with_one_line(d, small_fs / "b.db", "cannot write")
    assert list(small_fs.iterdir()) == []


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=30)
    return int(proc.stdout)


def test_a_backup_killed_part_way_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    d, source = _database(tmp_path)
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")  # so that a lock holds the backup's read back
    conn.execute("BEGIN EXCLUSIVE")
    backups = tmp_path / "backups"
    backups.mkdir()
    try:
        killed = subprocess.Popen([sys.executable, "-m", "runnerd", "backup", "-c", str(d.config),
                                   str(backups / "monday.db")], env=d.env, cwd=d.tmp)
        partial = backups / f".monday.db.{killed.pid}.partial"
        wait_for(partial.exists, message="the backup's copy begun")
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
    finally:
        conn.close()
    assert partial.exists()  # what the killed backup left
    dead = _dead_pid()
    leftovers = [partial, backups / f".sunday.db.{dead}.partial-journal"]
    leftovers[1].write_bytes(b"")
    running = backups / f".other.db.{os.getpid()}.partial"  # a live backup's: left alone
    running.write_bytes(b"")
    out = d.cli("backup", str(backups / "tuesday.db"))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in backups.iterdir()) == [running.name, "tuesday.db"]
    assert f"removed {partial} left by an interrupted backup" in out.stderr
    check_copy(backups / "tuesday.db", [])


def test_the_daemon_start_removes_stale_backup_copies(make_daemon, tmp_path: Path) -> None:
    d: Daemon = make_daemon(HOOKS)
    stale = tmp_path / f".runnerd-copy.db.{_dead_pid()}.partial"
    stale.write_bytes(b"half a database")
    running = tmp_path / f".runnerd-copy.db.{os.getpid()}.partial"
    running.write_bytes(b"")
    d.start()
    assert not stale.exists() and running.exists()
    assert f"removed {stale} left by an interrupted backup" in d.logs()
    assert d.stop() == 0
