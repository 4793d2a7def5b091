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

Several nodes share one database (SPEC §14): `lock` holds a session advisory lock on the node's
name for the node's lifetime, taken again after a server restart (`NameLock.keep`), so two live
nodes never share a name (the SQLite lock file keeps one daemon per file). `backup` writes a
pg_dump archive.

A connection lost under a running daemon (the server stopped or restarted, the backend
terminated) is re-opened by itself (`Link`): each database thread's connection, and the event
loop's reader, is checked before use and re-opened when broken, with a bounded backoff between
attempts while the server stays away; meanwhile every statement fails at once with
`psycopg.OperationalError` (a DatabaseError upstairs: webhooks, pings and /api answer 503).
`Outage` logs one line when the server is lost and one when it is back, not one per attempt.
A new connection starts with nothing prepared: psycopg prepares statements per connection again.
An attempt to connect gives up after CONNECT_TIMEOUT seconds unless the URL sets
`connect_timeout` (libpq's default waits forever on a server that never answers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from psycopg import conninfo
from psycopg.abc import Buffer
from psycopg.types.numeric import Int2Dumper
from psycopg.types.string import StrDumperUnknown

from runnerd import errors
from runnerd.store import db, dbfiles, sql

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Re-opening a lost connection: the first retry this many seconds after a failed attempt,
#: each next one twice as late, up to RETRY_MAX (a server back is noticed within RETRY_MAX).
RETRY_MIN = 0.25
RETRY_MAX = 5.0

#: pg_advisory_lock key (any bigint) of the migrations ("runnerd" + 1). A node's lock is a
#: 64-bit hash of its name (`lock`); retention's is in postgres/queries.sql (`prune_lock`).
MIGRATE_LOCK = 0x72756E6E657264 + 1


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


#: Seconds a connection attempt may take, unless the URL's `connect_timeout=` (or libpq's
#: PGCONNECT_TIMEOUT) says otherwise: libpq waits forever by default (psycopg 130 s), so a
#: server that never answers would hang start-up, and each reconnect on a database thread.
CONNECT_TIMEOUT = 10


def _timeout(url: str) -> dict[str, Any]:
    """The connection parameter runnerd adds to `url`: CONNECT_TIMEOUT, unless set."""
    if "connect_timeout" in conninfo.conninfo_to_dict(url) or "PGCONNECT_TIMEOUT" in os.environ:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


class _TextDumper(StrDumperUnknown):
    """Strings as psycopg binds them by default, but a NUL character, which PostgreSQL's text
    cannot hold (SQLite's can), as U+FFFD instead of a DataError that would undo the whole
    transaction (a worker turn, a batch of webhooks). Only plain text can hold one (an error
    message, an email's text, a ping's body, all possibly from event data): JSON columns hold
    `\\u0000` escapes, so event data, options, results and cache values stay as they came."""

    def dump(self, obj: str) -> Buffer | None:
        """The text in the connection's encoding."""
        return super().dump(obj.replace("\0", "\ufffd") if "\0" in obj else obj)


def connect(url: str, *, readonly: bool = False, name: str = "runnerd") -> psycopg.Connection[Any]:
    """A connection in autocommit (runnerd writes BEGIN and COMMIT) giving `PgRow`s; booleans
    bound as integers (the schema's flags are INTEGER, as on SQLite), NULs in text as U+FFFD
    (`_TextDumper`); an attempt gives up after
    CONNECT_TIMEOUT seconds unless the URL says otherwise."""
    conn: psycopg.Connection[Any] = psycopg.connect(
        url, autocommit=True, row_factory=_rows,
        application_name=f"{name} pid {os.getpid()}", **_timeout(url))
    conn.adapters.register_dumper(bool, Int2Dumper)
    conn.adapters.register_dumper(str, _TextDumper)
    if readonly:
        conn.execute("SET default_transaction_read_only = on")
    return conn


class Outage:
    """Whether a database's server is reachable, shared by its connections (their threads):
    one log line when it is lost, one when it is back, whichever connection notices."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.why: str | None = None  #: why the server is unreachable; None while it is not
        self._lock = threading.Lock()

    def lost(self, why: str) -> None:
        """A connection broke, or could not be opened."""
        with self._lock:
            if self.why is not None:
                return
            self.why = why
        logger.error("database %s unreachable: %s (retrying)", self.label, why,
                     extra={"action": "db_unreachable"})

    def back(self) -> bool:
        """A connection was opened again; whether that ended an outage."""
        with self._lock:
            if self.why is None:
                return False
            self.why = None
        logger.warning("database %s reachable again", self.label,
                       extra={"action": "db_reachable"})
        return True


def _closed_by_server(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server ended this idle connection (a terminated backend, a server stopped
    or restarted): it is broken, or its socket has something to read though nothing was asked
    (then one round trip tells)."""
    if conn.broken or conn.closed:
        return True
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if not poller.poll(0):
        return False  # the usual case: one poll(2), no round trip
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


class Link:
    """One connection to the server, re-opened when the server ended it (`get`).

    While the server stays unreachable, an attempt is made at most every RETRY_MIN..RETRY_MAX
    seconds (doubling); between attempts `get` fails at once with the last reason, so a caller
    never waits on a server that is gone; once another link of the database re-opened its
    connection (the `Outage` is over), the next `get` tries at once. Used on one thread only
    (the one it was opened on).
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], outage: Outage,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connect = connect
        self._outage = outage
        self._clock = clock
        self._delay = RETRY_MIN
        self._next = 0.0
        self._why = ""
        self.conn: psycopg.Connection[Any] | None = connect()  # the first failure is loud

    @property
    def label(self) -> str:
        """The database, for messages."""
        return self._outage.label

    def get(self) -> psycopg.Connection[Any]:
        """The connection, re-opened first if the server ended it; psycopg.OperationalError
        when it cannot be (now, or at the last attempt, until the backoff has passed)."""
        conn = self.conn
        if conn is not None and not _closed_by_server(conn):
            return conn
        lost = conn is not None
        self.close()
        now = self._clock()
        if now < self._next and self._outage.why is not None:  # unless another link is back
            raise psycopg.OperationalError(self._why)
        try:
            self.conn = self._connect()
        except psycopg.Error as exc:
            self._why = _first_line(exc)
            self._next, self._delay = now + self._delay, min(2 * self._delay, RETRY_MAX)
            self._outage.lost(self._why)
            raise psycopg.OperationalError(self._why) from exc
        self._next, self._delay = 0.0, RETRY_MIN
        if not self._outage.back() and lost:  # the server is up: only this connection ended
            logger.info("database %s: a lost connection was re-opened", self._outage.label,
                        extra={"action": "db_reconnected"})
        return self.conn

    def close(self) -> None:
        """Close the connection (if open)."""
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None


def _linked(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn(connection, *args)` as a database thread runs it on a `Link`: on its connection,
    re-opened first if lost."""
    def run(link: Link, *args: Any) -> T:
        return fn(link.get(), *args)
    return run


class LinkedReader(PgQueries):
    """The event loop's read-only `Reader` on a `Link` (re-opened when lost); a server that
    cannot be reached is a DatabaseError, as on the database threads (`PgDatabase.read`)."""

    __slots__ = ()

    @property
    def pg(self) -> psycopg.Connection[Any]:
        """The connection, re-opened first if the server ended it."""
        return cast("Link", self.conn).get()

    def all(self, name: str, params: db.Params = None) -> list[db.Row]:
        """All rows of the named query."""
        with _unreachable(self):
            return super().all(name, params)

    def one(self, name: str, params: db.Params = None) -> db.Row | None:
        """The first row of the named query, or None."""
        with _unreachable(self):
            return super().one(name, params)

    def close(self) -> None:
        """Close the connection."""
        cast("Link", self.conn).close()


@contextlib.contextmanager
def _unreachable(reader: LinkedReader) -> Iterator[None]:
    """psycopg.OperationalError as a DatabaseError naming the database."""
    try:
        yield
    except psycopg.OperationalError as exc:
        link = cast("Link", reader.conn)
        raise errors.DatabaseError(
            f"database error: {_first_line(exc)} ({link.label})") from exc


def _in_transaction(conn: psycopg.Connection[Any]) -> bool:
    """Whether a ROLLBACK is owed (not on an idle or broken connection)."""
    return not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


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
    # the database threads hold a `Link`, not a connection
    group = staticmethod(_linked(_group))
    transaction = staticmethod(_linked(_transaction))
    read_mode = "ISOLATION LEVEL REPEATABLE READ READ ONLY"
    migrator = staticmethod(_linked(migrate_sync))

    def __init__(self, url: str) -> None:
        super().__init__(Path(db.redact(url)))
        self.url = url
        self.label = db.redact(url)  # not str(self.path): a Path folds the URL's //
        self.outage = Outage(self.label)  #: shared by the threads' and the loop's connections

    @property
    def unreachable(self) -> str | None:
        """The database and why its server cannot be reached, while a connection to it cannot
        be opened again (`Outage`); None otherwise."""
        why = self.outage.why
        return None if why is None else f"{self.label}: {why}"

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
            await self._writer.open(lambda: Link(lambda: connect(self.url), self.outage))
            self._reader = db.DatabaseThread("runnerd-db-reader")
            await self._reader.open(
                lambda: Link(lambda: connect(self.url, readonly=True), self.outage))
        except psycopg.Error as exc:
            await self.close()
            raise errors.DatabaseError(
                f"cannot open database {self.label}: {_first_line(exc)}") from exc
        return self

    async def schema_version(self) -> int:
        """The number of the last migration applied (0: none)."""
        if self._reader is None:
            raise errors.DatabaseError("database is closed")
        return await self._reader.call(_linked(_version))

    def describe(self, exc: Exception) -> str:
        """The first line of psycopg's message (the rest is a server's DETAIL and HINT)."""
        return _first_line(exc)

    def sync_reader(self) -> db.Reader:
        """A read-only connection for the event loop's thread (cache reads while rendering)."""
        return LinkedReader(Link(  # type: ignore[return-value]
            lambda: connect(self.url, readonly=True), self.outage))


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
    params = {**_timeout(url), **conninfo.conninfo_to_dict(url)}
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


#: A node's session advisory lock key: a 64-bit hash of its name (prefixed, so it cannot be
#: another of runnerd's keys by accident).
_NODE_KEY = "hashtextextended('runnerd node ' || %(node)s, 0)"


class NameLock:
    """The session advisory lock on a node's name, on a connection of its own (`lock`).

    A server restart (or a terminated backend) ends that session and so the lock: `keep`, called
    periodically (the heartbeat), notices the lost connection and takes the lock again once the
    server is back, or raises AlreadyRunning if another process took the name meanwhile."""

    def __init__(self, url: str, node: str) -> None:
        self.url = url
        self.node = node
        self.conn: psycopg.Connection[Any] | None = None
        self._lost = False  # the lost lock was logged, not yet taken again

    def take(self) -> None:
        """Open the connection and take the lock; AlreadyRunning naming the other node (its pid
        and host from `workers`) if a live process has the name; DatabaseError if the server
        cannot be reached."""
        try:
            conn = connect(self.url, name=f"runnerd node {self.node}")
        except psycopg.Error as exc:
            raise errors.DatabaseError(
                f"cannot open database {db.redact(self.url)}: {_first_line(exc)}") from exc
        try:
            row = conn.execute(f"SELECT pg_try_advisory_lock({_NODE_KEY}) AS ok",
                               {"node": self.node}).fetchone()
            if row is None or not row["ok"]:
                raise errors.AlreadyRunning(
                    f"another runnerd node named {self.node!r} ({_holder(conn, self.node)}) is "
                    f"already running on {db.redact(self.url)}")
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def keep(self) -> None:
        """Keep the lock: nothing to do while its connection is open (one poll(2), no round
        trip); once the server ended it, take the lock again (while the server cannot be
        reached, the next call tries again). AlreadyRunning if another process holds the name
        now: this node must stop."""
        if self.conn is not None and not _closed_by_server(self.conn):
            return
        if not self._lost:
            self._lost = True
            logger.error("node %r lost its name's lock with its connection; taking it again "
                         "when the server is back", self.node, extra={"action": "node_lock_lost"})
        self.close()
        try:
            self.take()
        except errors.AlreadyRunning:  # a DatabaseError too, but not one to wait out
            raise
        except errors.DatabaseError:  # the server is not back yet
            return
        self._lost = False
        logger.warning("node %r holds its name's lock again", self.node,
                       extra={"action": "node_lock_retaken"})

    def close(self) -> None:
        """Close the connection (the lock goes with it)."""
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None


@contextlib.contextmanager
def lock(url: str, node: str) -> Iterator[NameLock]:
    """Hold the lock on the name `node` for the node's lifetime (`NameLock`): AlreadyRunning if
    a live node has that name."""
    held = NameLock(url, node)
    held.take()
    try:
        yield held
    finally:
        held.close()


def _holder(conn: psycopg.Connection[Any], node: str) -> str:
    """"pid N on HOST" of the other live process named `node`: its latest `workers` row, not
    this process's (before its first beat: the pid in its lock connection's
    application_name)."""
    exists = conn.execute("SELECT to_regclass('workers') IS NOT NULL AS ok").fetchone()
    found = conn.execute(
        "SELECT pid, host FROM workers WHERE node = %(node)s AND stopped_at IS NULL"
        " AND NOT (pid = %(pid)s AND host = %(host)s)"
        " ORDER BY heartbeat_at DESC LIMIT 1",
        {"node": node, "pid": os.getpid(), "host": socket.gethostname()}).fetchone() if (
        exists and exists["ok"]) else None
    if found is not None:
        return f"pid {found['pid']} on {found['host']}"
    prefix = f"runnerd node {node} pid "
    for row in conn.execute("SELECT application_name AS name FROM pg_stat_activity"
                            " WHERE application_name LIKE 'runnerd node %%'").fetchall():
        if row["name"].startswith(prefix) and row["name"] != f"{prefix}{os.getpid()}":
            return f"pid {row['name'].removeprefix(prefix)}, starting"
    return "starting"
