"""The database under stress: disk full and read-only file systems (a small tmpfs, root only),
a locked or corrupt file at start, a file deleted or replaced under the running daemon, commands
run where there is no database. A second daemon is refused: see test_acceptance.py."""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Daemon, require
from .helpers import Loader, orders_config, tmpfs, wait_for

HOOKS = orders_config('{% action "echo", n: event.data.n %}', concurrency=2)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, or a skip where mounting is not permitted (not root, no CAP_SYS_ADMIN; a failure in CI)."""
    try:
        with tmpfs(tmp_path / "fs", "6m") as path:
            yield path
    except PermissionError as exc:
        require(False, f"cannot mount a tmpfs here: {exc}")


def _fill(directory: Path) -> Path:
    """Take every free byte of the file system with one file; return it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 65536, 4096, 1):  # big chunks, then the last bytes
            for _ in range(10_000):  # bounded: the tmpfs is far smaller
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def _health(d: Daemon) -> int:
    """/health's status."""
    return d.request("GET", "/health")[0]


@pytest.mark.sqlite_only("a full disk under the SQLite file (tmpfs); a PostgreSQL server gone is tests/test_postgres_outages.py")
def test_disk_full_answers_503_never_204_and_recovers(make_daemon, small_fs: Path) -> None:
    d: Daemon = make_daemon(HOOKS)
    d.db_path = small_fs / "runnerd.db"
    d.write_config(HOOKS)
    d.start()
    accepted: list[str] = []

    def post(n: int) -> int:
        status, headers, _ = d.post_json("/webhooks/orders", {"n": n, "pad": "y" * 40_000})
        if status == 204:
            accepted.append(headers["X-Request-Id"])
        return status

    assert post(0) == 204
    assert _health(d) == 200
    filler = _fill(small_fs)
    statuses = [post(n) for n in range(1, 200)]  # the WAL may still take a few
    assert 503 in statuses, f"never refused on a full disk: {statuses}"
    assert set(statuses) <= {204, 503}, statuses
    first_503 = statuses.index(503)
    full = statuses[first_503:]
    # the heartbeat's next write (every 5 s) finds the database unwritable
    wait_for(lambda: _health(d) == 503, timeout=15, interval=0.2,
             message="/health reporting the unwritable database")
    filler.unlink()
    wait_for(lambda: post(1000) == 204, timeout=15, message="webhooks accepted again")
    wait_for(lambda: _health(d) == 200, timeout=15, interval=0.2,
             message="/health healthy again")
    d.wait_runs("action_type = 'echo' AND state = 'succeeded'", len(accepted), timeout=30)
    stored = {r[0] for r in d.query("SELECT webhook_request_id FROM events")}
    print(f"disk full: {len(accepted)} accepted, {full.count(503)} refused with 503, "
          f"{len(set(accepted) - stored)} lost")
    assert set(accepted) <= stored, "an acknowledged event was lost"
    assert d.stop() == 0
    assert d.query("SELECT COUNT(*) FROM runs WHERE state = 'started'")[0][0] == 0
    check = sqlite3.connect(d.db_path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()


@pytest.mark.sqlite_only("the database file itself")
def test_read_only_database_is_one_clear_line(make_daemon, tmp_path: Path) -> None:
    d: Daemon = make_daemon(HOOKS)
    d.create_database()
    # A read-only bind mount of the file itself: even root cannot write through it.
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(d.db_path), str(d.db_path)],
                           capture_output=True, text=True, timeout=10)
    if mount.returncode != 0:
        require(False, f"cannot bind-mount here: {mount.stderr.strip()}")
    try:
        out = _run(d.config)
    finally:
        subprocess.run(["umount", str(d.db_path)], check=True, timeout=10)
    _one_clear_line(out, "readonly database")
    assert str(d.db_path) in out.stderr


@pytest.mark.sqlite_only("the database file itself")
def test_read_only_file_system_at_start_is_one_clear_line(make_daemon,
                                                          small_fs: Path) -> None:
    d: Daemon = make_daemon(HOOKS)
    d.db_path = small_fs / "runnerd.db"
    d.write_config(HOOKS)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True, timeout=10)
    try:
        out = _run(d.config)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True, timeout=10)
    _one_clear_line(out, "Read-only file system")


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runnerd", "run", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def _one_clear_line(out: subprocess.CompletedProcess[str], words: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], out.stderr


def test_locked_database_at_start_is_one_clear_line(tmp_path: Path) -> None:
    db_path = tmp_path / "locked.db"
    config = tmp_path / "c.yaml"
    config.write_text(f"database: {db_path}\n")
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")  # held for the daemon's whole busy timeout
        out = _run(config)
    finally:
        holder.close()
    _one_clear_line(out, "database is locked")


@pytest.mark.sqlite_only("the database file itself")
@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_corrupt_database_at_start_is_one_clear_line(make_daemon, damage: str) -> None:
    d: Daemon = make_daemon(HOOKS)
    if damage == "garbage":
        d.db_path.write_bytes(os.urandom(16384))
        words = "file is not a database"
    else:  # runnerd's own tables, with every page after the first overwritten
        d.create_database()
        for i in range(20):
            d.cli("send", "user/orders/ready", "--data", json.dumps({"pad": "z" * 3000}),
                  check=True)
        with open(d.db_path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            for offset in range(4096, size, 4096):
                f.seek(offset)
                f.write(os.urandom(4096))
        words = "malformed"
    out = _run(d.config)
    _one_clear_line(out, words)
    assert out.stderr.startswith("runnerd: ")


def test_port_in_use_at_start_is_one_clear_line(make_daemon) -> None:
    d: Daemon = make_daemon(HOOKS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", d.port))
        taken.listen()
        out = _run(d.config)
    _one_clear_line(out, "cannot listen")


@pytest.mark.sqlite_only("a full disk under the SQLite file (tmpfs); a PostgreSQL server gone is tests/test_postgres_outages.py")
def test_disk_full_under_webhook_load_logs_each_error_once_per_interval(make_daemon,
                                                                       small_fs: Path) -> None:
    d: Daemon = make_daemon(HOOKS)
    d.db_path = small_fs / "runnerd.db"
    d.write_config(HOOKS)
    d.start()
    filler = _fill(small_fs)
    loaders = [Loader(d.port).start() for _ in range(3)]
    try:  # every batch fails: hundreds of failed commits (a few seconds, well within 10 s)
        wait_for(lambda: sum(x.statuses.get(503, 0) for x in loaders) >= 1000, timeout=20,
                 message="1000 webhooks refused")
    finally:
        for loader in loaders:
            loader.stop()
    refused = sum(x.statuses.get(503, 0) for x in loaders)
    errors = [line for line in d.log_lines() if line.startswith("ERROR")]
    print(f"disk full: {refused} webhooks refused, {len(errors)} ERROR lines")
    # one line per distinct error (the ingest, the worker, the heartbeat…), not one per batch
    assert 1 <= len(errors) <= 6, "\n".join(errors[:20])
    filler.unlink()
    assert d.stop() == 0
    # at exit, each suppressed error is written once more with its count
    counted = [line for line in d.log_lines() if "times in 10 s)" in line]
    assert any(line.startswith("ERROR runnerd.queue.ingest: cannot store") for line in counted), counted
    assert sum(int(line.rsplit("(repeated ", 1)[1].split()[0]) for line in counted) >= 100


MONITORED = HOOKS + """
monitors:
  - {name: nightly, period: 1h}
"""


@pytest.mark.sqlite_only("the database file itself")
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_under_the_daemon_gets_503_not_204(make_daemon,
                                                                          how: str) -> None:
    d: Daemon = make_daemon(MONITORED)
    d.start()
    assert d.post_json("/webhooks/orders", {"n": 0})[0] == 204
    if how == "deleted":  # what `rm runnerd.db*` does
        for name in ("runnerd.db", "runnerd.db-wal", "runnerd.db-shm"):
            (d.tmp / name).unlink()
    else:  # a "restore" under the running daemon
        assert d.cli("backup", str(d.tmp / "copy.db")).returncode == 0
        os.replace(d.tmp / "copy.db", d.db_path)
    statuses = [d.post_json("/webhooks/orders", {"n": n}) for n in range(1, 101)]
    assert [s for s, _, _ in statuses] == [503] * 100
    assert json.loads(statuses[0][2]) == {
        "error": "event not stored: the database is unavailable"}
    assert d.request("GET", "/ping/nightly")[0] == 503
    status, _, body = d.request("GET", "/health")
    problem = f"database file {d.db_path} was {how}"
    assert status == 503 and json.loads(body)["problems"][0].startswith(problem), body
    lines = [line for line in d.log_lines() if problem in line]
    assert lines and lines[0].startswith(f"ERROR runnerd.store.dbfiles: {problem}"), d.logs()
    if how == "deleted":  # the commands do not make a new file under the daemon either
        out = d.cli("runs")
        assert (out.returncode, out.stderr) == (1, f"runnerd: database {d.db_path} does not "
                                                   "exist (start the daemon with 'runnerd run' "
                                                   "to create it)\n")
        assert not d.db_path.exists()
    assert d.stop() == 0
    d.start()  # the new start opens whatever is at the path now; nothing acknowledged is lost
    stored = [json.loads(r[0]) for r in d.query("SELECT data FROM events")]
    assert stored == ([] if how == "deleted" else [{"n": 0}])
    assert d.post_json("/webhooks/orders", {"n": 101})[0] == 204
    assert d.stop() == 0



@pytest.mark.sqlite_only("the database file itself")
def test_only_run_creates_or_migrates_the_database(make_daemon) -> None:
    d: Daemon = make_daemon(MONITORED)
    commands = [["runs"], ["runs", "show", "1"], ["runs", "retry", "1"], ["queue"],
                ["workers"], ["monitors"], ["monitors", "pause", "nightly"],
                ["cache", "get", "k"], ["cache", "set", "k", "v"], ["cache", "del", "k"],
                ["send", "user/orders/ready"], ["trigger", "Counter"], ["prune"],
                ["backup", str(d.tmp / "copy.db")], ["monitor", "tasks", "--task", "Counter", "5"]]
    before = sorted(p.name for p in d.tmp.iterdir())
    for argv in commands:
        out = d.cli(*argv)
        assert (out.returncode, out.stdout, out.stderr) == (
            1, "", f"runnerd: database {d.db_path} does not exist (start the daemon with "
                   "'runnerd run' to create it)\n"), argv
    assert sorted(p.name for p in d.tmp.iterdir()) == before, "a command created a file"
    # the commands that need no database work without one
    assert d.cli("check").returncode == 0
    assert d.cli("preview", "Counter", "--data", '{"n": 1}').returncode == 0
    d.db_path.touch()  # an empty file (a start that failed before migrating) is not migrated
    out = d.cli("runs")
    assert (out.returncode, out.stderr) == (1, f"runnerd: database {d.db_path} is empty (start "
                                               "the daemon with 'runnerd run' to migrate it)\n")
    assert d.db_path.stat().st_size == 0
    d.start()
    assert d.stop() == 0
    assert d.cli("runs").stdout == "no runs\n"
    assert d.cli("send", "user/orders/ready").returncode == 0
