"""PostgreSQL behind the same seam as SQLite (`database: postgresql://…`), through psycopg 3.

Imported only when the configured database is a URL (`backends.open_database`), so SQLite users need
neither psycopg nor this module. The same synchronous transaction functions run here as on
SQLite: `PgDatabase` keeps `Database`'s threads and group commits and changes only what the
engine changes: the connections (psycopg, autocommit, runnerd writes BEGIN and COMMIT; a
transaction's statements go in pipeline mode, waited for only where they are read), the
statements (`sql.pg_queries`: the portable `queries.sql` with `postgres/queries.sql`'s blocks in
place of the ones that differ, parameters rewritten to psycopg's style), the migrations
(`postgres/migrations/`, applied under an advisory lock and recorded in `runnerd_schema`), and
which errors mean "the database cannot be used" (`psycopg.OperationalError`).

One daemon per database until nodes exist: `lock` holds a session advisory lock for the
daemon's lifetime, as the SQLite lock file does. `backup` writes a pg_dump archive. A lost
connection is not re-opened yet: writes fail (webhooks get 503) until runnerd is restarted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from psycopg import conninfo
from psycopg.types.numeric import Int2Dumper

from runnerd import errors
from runnerd.store import db, dbfiles, sql

T = TypeVar("T")

#: pg_advisory_lock keys (any bigint): the daemon's and the migrations'.
DAEMON_LOCK = 0x72756E6E657264  # "runnerd"
MIGRATE_LOCK = DAEMON_LOCK + 1


class PgRow(dict[str, Any]):
    """A row as `db.Row` promises: columns by name or by position."""

    def __getitem__(self, key: str | int, /) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)

    def keys(self) -> list[str]:  # type: ignore[override]
        """The column names, in order."""
        return list(super().keys())


def _rows(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    """psycopg row factory: `PgRow`s."""
    names = [column.name for column in cursor.description or ()]
    return lambda values: PgRow(zip(names, values, strict=True))


class PgResult:
    """A statement's effect (`db.Result`): the id an INSERT stored is the first column it
    RETURNs (the PostgreSQL blocks of inserts whose id is used say `RETURNING id`).

    Inside a transaction the statement was only queued (pipeline mode, see `_transaction`):
    reading its effect is what waits for the server, once for everything queued so far."""

    __slots__ = ("_cursor", "_pipe")

    def __init__(self, cursor: psycopg.Cursor[Any], pipe: psycopg.Pipeline | None) -> None:
        self._cursor = cursor
        self._pipe = pipe

    def _ready(self) -> psycopg.Cursor[Any]:
        if self._pipe is not None and self._cursor.pgresult is None:
            self._pipe.sync()
        return self._cursor

    @property
    def rowcount(self) -> int:
        """The rows the statement changed."""
        return self._ready().rowcount

    @property
    def lastrowid(self) -> int | None:
        """The id RETURNed by an INSERT; None without RETURNING."""
        cursor = self._ready()
        if cursor.description is None:
            return None
        row = cursor.fetchone()
        return None if row is None else int(row[0])


class PgQueries(db.Tx):
    """Named queries on a psycopg connection (inside a transaction, or autocommit).

    In a transaction, `pipe` is the connection's pipeline: statements are sent without waiting,
    and the server is waited for only where a function reads an answer (rows, a rowcount, an
    id) and once at the end, so a transaction costs a round trip per read, not per statement."""

    __slots__ = ("pipe",)

    def __init__(self, conn: Any, pipe: psycopg.Pipeline | None = None) -> None:
        super().__init__(conn)
        self.pipe = pipe

    @property
    def pg(self) -> psycopg.Connection[Any]:
        """The psycopg connection (`conn`, typed for SQLite in `db.Queries`)."""
        return cast("psycopg.Connection[Any]", self.conn)

    def execute(self, name: str, params: db.Params = None) -> db.Result:
        """Run the named query."""
        return PgResult(self.pg.execute(sql.pg_queries()[name], params or {}), self.pipe)

    def all(self, name: str, params: db.Params = None) -> list[db.Row]:
        """All rows of the named query."""
        rows: list[db.Row] = self.pg.execute(sql.pg_queries()[name], params or {}).fetchall()
        return rows

    def one(self, name: str, params: db.Params = None) -> db.Row | None:
        """The first row of the named query, or None."""
        row: db.Row | None = self.pg.execute(sql.pg_queries()[name], params or {}).fetchone()
        return row

    def executemany(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run the named query once per parameter mapping (one pipeline)."""
        self.pg.cursor().executemany(sql.pg_queries()[name], list(rows))

    def inserted_ids(self, name: str, rows: Iterable[Mapping[str, Any]]) -> list[int]:
        """Run the named INSERT (it says `RETURNING id`) once per row in one pipeline; the ids
        stored, in order: one wait for the server for all of them."""
        params = list(rows)
        if not params:
            return []
        cursor = self.pg.cursor()
        cursor.executemany(sql.pg_queries()[name], params, returning=True)
        ids = []
        while True:
            row = cursor.fetchone()
            ids.append(int(row[0]) if row is not None else 0)
            if not cursor.nextset():
                return ids

    def later(self, name: str, params: db.Params = None) -> Callable[[], list[db.Row]]:
        """Send the named query; its rows when the returned function is called: in a transaction
        the first such call waits once for everything sent so far."""
        cursor = self.pg.execute(sql.pg_queries()[name], params or {})
        return cursor.fetchall

    def close(self) -> None:
        """Close the connection (a `Reader`'s)."""
        self.pg.close()


def connect(url: str, *, readonly: bool = False, name: str = "runnerd") -> psycopg.Connection[Any]:
    """A connection in autocommit (runnerd writes BEGIN and COMMIT) giving `PgRow`s; booleans
    bound as integers (the schema's flags are INTEGER, as on SQLite)."""
    conn: psycopg.Connection[Any] = psycopg.connect(
        url, autocommit=True, row_factory=_rows,
        application_name=f"{name} pid {os.getpid()}")
    conn.adapters.register_dumper(bool, Int2Dumper)
    if readonly:
        conn.execute("SET default_transaction_read_only = on")
    return conn


def _in_transaction(conn: psycopg.Connection[Any]) -> bool:
    return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def _drain(pipe: psycopg.Pipeline) -> None:
    """After an exception: take in the answers still queued, whatever they say (a failed
    statement leaves the pipeline aborted until then; its error is the exception being handled,
    or came after it), so that the next statement is run."""
    with contextlib.suppress(psycopg.Error):
        pipe.sync()


def _rollback(conn: psycopg.Connection[Any], pipe: psycopg.Pipeline) -> None:
    _drain(pipe)
    if _in_transaction(conn):
        conn.execute("ROLLBACK")


def _transaction(conn: psycopg.Connection[Any], fn: Callable[[db.Tx], T], mode: str) -> T:
    """`fn` between BEGIN and COMMIT in pipeline mode (`PgQueries`): BEGIN, the statements
    nobody reads and COMMIT travel together."""
    with conn.pipeline() as pipe:
        conn.execute(f"BEGIN {mode}")
        try:
            result = fn(PgQueries(conn, pipe))
            conn.execute("COMMIT")
            pipe.sync()
        except BaseException:
            _rollback(conn, pipe)
            raise
    return result


def _group(conn: psycopg.Connection[Any],
           fns: list[Callable[[db.Tx], Any]]) -> list[tuple[bool, Any]]:
    """`db._group` on PostgreSQL: the functions in one transaction, each in a savepoint (a
    failed statement aborts the transaction until its savepoint is rolled back), in pipeline
    mode like `_transaction`: each function's statements are settled before its savepoint is
    released, so an error is handed to the function whose statement failed."""
    out: list[tuple[bool, Any]] = []
    with conn.pipeline() as pipe:
        conn.execute("BEGIN")
        try:
            for fn in fns:
                conn.execute("SAVEPOINT w")
                try:
                    result = fn(PgQueries(conn, pipe))
                    pipe.sync()
                except psycopg.OperationalError:
                    raise  # the connection or the server failed: nothing of the group commits
                except Exception as exc:  # noqa: BLE001 - handed back to the caller
                    _drain(pipe)
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    out.append((False, exc))
                    continue
                conn.execute("RELEASE w")
                out.append((True, result))
            conn.execute("COMMIT")
            pipe.sync()
        except BaseException:
            _rollback(conn, pipe)
            raise
    return out


def _version(conn: psycopg.Connection[Any]) -> int:
    """The last migration recorded in runnerd_schema (0: none, or no such table)."""
    exists = conn.execute("SELECT to_regclass('runnerd_schema')").fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM runnerd_schema").fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def migrate_sync(conn: psycopg.Connection[Any]) -> int:
    """Apply the PostgreSQL migrations, each committed with its version, under an advisory
    lock: daemons starting together on an empty database wait for one another."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS runnerd_schema (version INTEGER NOT NULL)")
        version = _version(conn)
        for number, name, script in sql.migrations("postgres"):
            if number <= version:
                continue
            try:
                with conn.transaction():
                    conn.execute(script.encode())  # several statements: no parameters
                    conn.execute("INSERT INTO runnerd_schema (version) VALUES (%s)", (number,))
            except psycopg.Error as exc:
                raise psycopg.OperationalError(f"migration {name} failed: {exc}") from exc
            version = number
    return version


class PgDatabase(db.Database):
    """`Database` on a PostgreSQL URL: the same writer and reader threads, group commits and
    error contract; no files to watch."""

    driver_error: type[Exception] = psycopg.Error
    engine = "postgres"
    group = staticmethod(_group)
    transaction = staticmethod(_transaction)
    read_mode = "ISOLATION LEVEL REPEATABLE READ READ ONLY"
    migrator = staticmethod(migrate_sync)

    def __init__(self, url: str) -> None:
        super().__init__(Path(db.redact(url)))
        self.url = url
        self.label = db.redact(url)  # not str(self.path): a Path folds the URL's //

    def check_files(self) -> str | None:
        """A server has no files under runnerd's eyes: always None."""
        return None

    def watch(self) -> None:
        """Nothing to watch (see `check_files`)."""

    def unavailable(self, exc: Exception) -> bool:
        """The server refused for a reason outside the program (down, disk full, connection
        lost), not a statement's bug (a constraint, bad SQL), which stays loud."""
        return isinstance(exc, psycopg.OperationalError)

    async def open(self, *, create: bool = True) -> PgDatabase:
        """Connect the writer and the read-only reader (the server must exist; `create` is
        SQLite's concern)."""
        try:
            self._writer = db.DatabaseThread("runnerd-db-writer")
            await self._writer.open(lambda: connect(self.url))
            self._reader = db.DatabaseThread("runnerd-db-reader")
            await self._reader.open(lambda: connect(self.url, readonly=True))
        except psycopg.Error as exc:
            await self.close()
            raise errors.DatabaseError(
                f"cannot open database {self.label}: {_first_line(exc)}") from exc
        return self

    async def schema_version(self) -> int:
        """The number of the last migration applied (0: none)."""
        if self._reader is None:
            raise errors.DatabaseError("database is closed")
        return await self._reader.call(_version)

    def describe(self, exc: Exception) -> str:
        """The first line of psycopg's message (the rest is a server's DETAIL and HINT)."""
        return _first_line(exc)

    def sync_reader(self) -> db.Reader:
        """A read-only connection for the event loop's thread (cache reads while rendering)."""
        return PgQueries(connect(self.url, readonly=True))  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def backup(url: str, target: str | os.PathLike[str]) -> int:
    """`runnerd backup` on PostgreSQL: a `pg_dump` custom-format archive (one snapshot, taken
    while the daemon writes), published like a SQLite copy (`dbfiles.publish`). The password
    goes to pg_dump in its environment, not on its command line. Returns the archive's size."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise errors.DatabaseError("backup failed: pg_dump is not installed (Debian: apt-get "
                                   "install postgresql-client)")
    params = conninfo.conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password is not None else {})}

    def dump(partial: Path) -> int:
        done = subprocess.run(
            [pg_dump, "--format=custom", f"--file={partial}",
             f"--dbname={conninfo.make_conninfo('', **params)}"],
            env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
            raise errors.DatabaseError(f"backup failed: {why.removeprefix('pg_dump: ')}")
        return partial.stat().st_size

    return dbfiles.publish(Path(target), dump)


@contextlib.contextmanager
def lock(url: str) -> Iterator[None]:
    """Hold the daemon's session advisory lock on the database for the daemon's lifetime;
    AlreadyRunning if another runnerd holds it (one daemon per database until nodes exist)."""
    try:
        conn = connect(url, name="runnerd lock")
    except psycopg.Error as exc:
        raise errors.DatabaseError(
            f"cannot open database {db.redact(url)}: {_first_line(exc)}") from exc
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (DAEMON_LOCK,)).fetchone()
        if row is None or not row["ok"]:
            holder = conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                " AND (l.classid::bigint << 32) + l.objid::bigint = %s", (DAEMON_LOCK,),
            ).fetchone()
            who = holder["application_name"].removeprefix("runnerd lock ") if holder else "?"
            raise errors.AlreadyRunning(
                f"another runnerd ({who}) is already running on {db.redact(url)}")
        yield
    finally:
        conn.close()
