"""Shared fixtures: a migrated SQLite file, an injectable clock, and the real daemon as a process.

`RUNNERD_TEST_DATABASE=postgres` is the engine switch: every `Daemon` (the process-level tests)
then runs on a fresh PostgreSQL database of the session's throwaway server instead of a SQLite
file, and `Daemon.query` reads it (SQLite's `?` placeholders kept). Tests that are about SQLite
by nature (its files, its lock file, the sqlite3 CLI) carry `@pytest.mark.sqlite_only(reason)`
and are skipped with that reason under the switch."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import parser

from runnerd import config, models
from runnerd.monitoring import monitors, pings
from runnerd.store import db
from tests import helpers_postgres

ROOT = Path(__file__).resolve().parent.parent
#: The engine switch (see the module docstring): "postgres", or SQLite when unset or "sqlite".
ENGINE = os.environ.get("RUNNERD_TEST_DATABASE", "sqlite")
if ENGINE not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"RUNNERD_TEST_DATABASE={ENGINE!r}: use sqlite or postgres")
#: The session's PostgreSQL server under the switch (set by `_engine_switch`).
_server: helpers_postgres.Server | None = None
#: What starts a log line when stderr is not journald's (`runnerd.logs`).
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} ")


def require(available: bool, reason: str) -> None:
    """Skip the calling test when a system tool or permission it needs is missing, except in
    CI (`CI=true`), where scripts/setup-test-deps installs the tools and runs as root: there the
    test fails instead, so CI never silently leaves a whole area untested."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, but {reason}")
    pytest.skip(reason)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """A copy of config.example.yaml in `tmp_path`. The example is the user's file (`scripts/run`
    starts on it): tests read a copy, so nothing is ever written beside it (its database path is
    relative), and they assert nothing an edit may change."""
    return Path(shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.example.yaml"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[db.Database]:
    database = await db.Database(tmp_path / "test.db").open()
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail, naming `message`, after
    `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(0.01)


def create_pg_database(url: str) -> None:
    """`create_database` on a PostgreSQL database."""
    from runnerd.store import pg  # noqa: PLC0415 - psycopg only under the switch

    with pg.connect(url, name="runnerd tests") as conn:
        pg.migrate_sync(conn)


class PgRow(tuple[Any, ...]):
    """A PostgreSQL row as a test reads a `sqlite3.Row`: its values (iterating, by position),
    by column name, `keys()`."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self.names.index(key) if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self.names)


def pg_query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of `sql` on a PostgreSQL database: `?` placeholders become psycopg's `%s`."""
    from runnerd.store import pg  # noqa: PLC0415 - see create_pg_database

    def rows(cursor: Any) -> Callable[[Any], PgRow]:
        names = tuple(column.name for column in cursor.description or ())

        def make(values: Any) -> PgRow:
            row = PgRow(values)
            row.names = names
            return row
        return make

    with pg.connect(url, name="runnerd tests") as conn:
        cursor = conn.cursor(row_factory=rows)
        return cursor.execute(sql.replace("%", "%%").replace("?", "%s"), params).fetchall()


def create_database(path: Path) -> None:
    """Create and migrate a database as `runnerd run` does (no other command creates one)."""
    conn = sqlite3.connect(path)
    try:
        db.migrate_sync(conn)
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


class Daemon:
    """`python -m runnerd run` on a temp config, fed over HTTP on 127.0.0.1; on a SQLite file,
    or under the engine switch on a fresh PostgreSQL database (`pg_url`)."""

    def __init__(self, tmp: Path, body: str, *, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.db_path = tmp / "runnerd.db"
        if not hasattr(self, "pg_url"):  # a subclass may have chosen its database
            self.pg_url: str | None = None if _server is None else _server.new_database()
        self.config = tmp / "runnerd.yaml"
        self.write_config(body)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"

    @property
    def database(self) -> str:
        """What `database:` says: the PostgreSQL URL, or the SQLite file."""
        return self.pg_url or str(self.db_path)

    def write_config(self, body: str) -> None:
        head = f"database: {self.database}\nlisten: {{host: 127.0.0.1, port: {self.port}}}\n"
        self.config.write_text(head + textwrap.dedent(body))

    def create_database(self) -> Daemon:
        """Create and migrate the database, without starting the daemon (`create_database`)."""
        if self.pg_url is not None:
            create_pg_database(self.pg_url)
        else:
            create_database(self.db_path)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> Daemon:
        out = open(self.log, "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runnerd", "run", "-c", str(self.config)],
            stdout=out, stderr=out, env=self.env, cwd=self.tmp)
        out.close()
        if wait:
            wait_until(self._listening, timeout=20)
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_lines(self) -> list[str]:
        """The log's lines, each without the timestamp it starts with (`runnerd.logs`)."""
        return [TIMESTAMP.sub("", line, count=1) for line in self.logs().splitlines()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def post_json(self, path: str, value: Any, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, json.dumps(value),
                            {"Content-Type": "application/json", **(headers or {})})

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of `sql` (with `?` placeholders) on the daemon's database, by name or position."""
        if self.pg_url is not None:
            return pg_query(self.pg_url, sql, params)
        conn = sqlite3.connect(self.db_path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Change the daemon's database behind its back (one committed statement with `?`
        placeholders); the rows it changed."""
        if self.pg_url is not None:
            from runnerd.store import pg  # noqa: PLC0415 - see create_pg_database

            with pg.connect(self.pg_url, name="runnerd tests") as pg_conn:
                return pg_conn.execute(sql.replace("?", "%s"), params).rowcount
        conn = sqlite3.connect(self.db_path, timeout=10)
        try:
            with conn:
                return conn.execute(sql, params).rowcount
        finally:
            conn.close()

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runnerd", *args, "-c", str(self.config)],
                              capture_output=True, text=True, env=self.env, timeout=30,
                              check=check, cwd=self.tmp)

    def wait_runs(self, predicate_sql: str, count: int, timeout: float = 15.0) -> None:
        wait_until(lambda: self.query(f"SELECT COUNT(*) AS n FROM runs WHERE {predicate_sql}")[0]
                   ["n"] >= count, timeout=timeout)


def scrape(d: Daemon) -> dict[str, Any]:
    """GET /metrics of the daemon, parsed: {family name: family}."""
    status, headers, body = d.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
    return families


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    """The value of one sample of `family` (with these labels); KeyError when absent."""
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError((sample, labels))


async def ping(database: db.Database, name: str, status: str, body: bytes,
               now: float) -> list[models.Event]:
    """A ping as `/ping/{name}[/start|/fail]` records it: `status` succeeded, started or failed."""
    kind = {"succeeded": "success", "started": "start", "failed": "fail"}[status]
    return await monitors.ping(database, config.Monitoring(), pings.Ping(name, kind, body), now)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(body: str, daemon_class: type[Daemon] = Daemon, **kwargs: Any) -> Daemon:
        d = daemon_class(tmp_path, body, **kwargs)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


def serve(d: Daemon) -> Iterator[Daemon]:
    """Start `d` for a module's tests (a module-scoped fixture yields from this); it must stop
    cleanly afterwards, and is killed if it did not."""
    d.start()
    try:
        yield d
        assert d.stop() == 0, d.logs()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[helpers_postgres.Server | str]:
    """A throwaway PostgreSQL server for the session (tests/helpers_postgres.py), or why none."""
    with helpers_postgres.server() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _engine_switch(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under RUNNERD_TEST_DATABASE=postgres, start the session's server for every `Daemon`."""
    global _server
    if ENGINE == "postgres":
        server = request.getfixturevalue("postgres_server")
        if isinstance(server, str):
            raise pytest.UsageError(f"RUNNERD_TEST_DATABASE=postgres, but {server}")
        _server = server
    yield
    _server = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): about SQLite itself; skipped on PostgreSQL "
        "(RUNNERD_TEST_DATABASE=postgres)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if ENGINE == "postgres" and (mark := item.get_closest_marker("sqlite_only")) is not None:
        pytest.skip(f"SQLite only: {mark.args[0] if mark.args else mark.kwargs['reason']}")


@pytest.fixture
def pg_url(postgres_server: helpers_postgres.Server | str) -> str:
    """The URL of a fresh, empty PostgreSQL database (skips, or fails in CI, without a server)."""
    require(not isinstance(postgres_server, str), str(postgres_server))
    assert not isinstance(postgres_server, str)
    return postgres_server.new_database()
