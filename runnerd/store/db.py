"""The SQLite file: pragmas, migrations, the one write path, reads, and the daemon's lock file.

This module is the storage seam: everything outside `runnerd.store` reaches the database through
a `Database` (its `write` and `read`), the `Tx` they hand to a function, or a `Reader`, and
names every statement (`sql.queries`); rows come back as `Row`s, a statement's effect as a
`Result`, and a database that cannot be used (full, locked, read-only, gone, corrupt) as
`errors.DatabaseError`; a statement's own bug (a constraint violated) stays the driver's
exception, loud. Nothing else imports `sqlite3`. `database:` as a PostgreSQL URL gives a
`store.pg.PgDatabase` instead (`store.backends.open_database`): the same seam on psycopg 3.

The database thread, by design: a transaction is a plain, synchronous function `fn(tx)` run whole
on a thread runnerd owns (`DatabaseThread`), between `BEGIN` and `COMMIT`: one thread hop per
transaction instead of one per statement, so a batch of a hundred runs costs one await, and the
same function runs unchanged on a psycopg connection (store/pg.py). The writer
connection lives on one thread and the read-only connection on another; each thread runs one
function at a time, so transactions can never interleave. Writes are coalesced into group
commits (see `Database`). A result crosses back to the event loop with
`loop.call_soon_threadsafe`, the same single hop aiosqlite makes; runnerd used aiosqlite only
for that hop (through its private `Connection._execute`), so the thread is now its own and
aiosqlite is no longer a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import re
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from runnerd import errors
from runnerd.store import dbfiles, sql

T = TypeVar("T")


class Row(Protocol):
    """A result row: columns by name (or position), and their names."""

    def __getitem__(self, key: str | int, /) -> Any:
        """The column's value."""

    def keys(self) -> list[str]:
        """The column names, in order."""


class Result(Protocol):
    """What running a statement gives back: how many rows it changed, an inserted row's id."""

    @property
    def rowcount(self) -> int:
        """The rows an INSERT, UPDATE or DELETE changed (the conditional updates' answer)."""

    @property
    def lastrowid(self) -> int | None:
        """The id of the row an INSERT stored."""


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """On the event loop: hand an outcome (a result, or an exception when not `ok`) to its
    awaiting caller, unless that caller was cancelled."""
    if future.done():  # the caller was cancelled
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class DatabaseThread:
    """A thread runnerd owns, running one function at a time on its own connection.

    `call(fn, *args)` queues `fn(connection, *args)` and returns a future of the event loop that
    called it; the thread runs it and sets the future with one `call_soon_threadsafe`. The
    connection is created on the thread (`open`) and used on no other.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn: Any = None  #: a sqlite3 connection, or store.pg's `Link` to a psycopg one
        self._jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[..., Any],
                                            tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """The thread's loop: run each function queued, until `stop`."""
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            try:
                outcome: tuple[bool, Any] = (True, fn(self.conn, *args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(connection, *args)` on this thread; the future of its result (to await)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, fn, args))
        return future

    async def open(self, connect: Callable[[], Any]) -> None:
        """Create this thread's connection with `connect()` (in autocommit: runnerd writes
        BEGIN and COMMIT)."""
        def opened(_: None) -> None:
            self.conn = connect()
        await self.call(opened)

    async def stop(self) -> None:
        """Close the connection and end the thread."""
        def close(conn: sqlite3.Connection | None) -> None:
            if conn is not None:
                conn.close()
        try:
            await self.call(close)
        finally:
            self.conn = None
            self._jobs.put(None)
            self._thread.join()


Params = Mapping[str, Any] | None


class Queries:
    """Named queries on one connection (`sql.queries`): the statements' one way in."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, name: str, params: Params = None) -> Result:
        """Run the named query."""
        return self.conn.execute(sql.queries[name], params or {})

    def all(self, name: str, params: Params = None) -> list[Row]:
        """All rows of the named query."""
        rows: list[Row] = self.conn.execute(sql.queries[name], params or {}).fetchall()
        return rows

    def one(self, name: str, params: Params = None) -> Row | None:
        """The first row of the named query, or None."""
        row: Row | None = self.conn.execute(sql.queries[name], params or {}).fetchone()
        return row


class Tx(Queries):
    """Named queries inside one transaction (run on the database thread)."""

    __slots__ = ()

    def executemany(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run the named query once per parameter mapping."""
        self.conn.executemany(sql.queries[name], rows)

    def inserted_ids(self, name: str, rows: Iterable[Mapping[str, Any]]) -> list[int]:
        """Run the named INSERT once per row; the ids of the rows stored, in order."""
        return [cast("int", self.conn.execute(sql.queries[name], row).lastrowid) for row in rows]

    def later(self, name: str, params: Params = None) -> Callable[[], list[Row]]:
        """Run the named query now; its rows when the returned function is called. Here they are
        read at once; on PostgreSQL (`pg.PgQueries.later`) the call is what waits for them, so
        the reads of a batch are sent first and waited for together."""
        rows = self.all(name, params)
        return lambda: rows

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: an exception inside undoes only its writes, then propagates."""
        self.conn.execute("SAVEPOINT sp")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO sp")
            self.conn.execute("RELEASE sp")
            raise
        self.conn.execute("RELEASE sp")


class Reader(Queries):
    """A read-only connection for the event loop's own thread, in autocommit: the short reads a
    render makes (the cache it reads, the loop protection's lookup) without a hop to the
    database thread (`Database.sync_reader`)."""

    __slots__ = ()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def _pragmas(conn: sqlite3.Connection, readonly: bool = False, wal: bool = True) -> None:
    conn.row_factory = sqlite3.Row
    # WAL lets sqlite3 users and CLI commands read while the daemon writes; FULL makes a
    # committed event survive a power cut (the promise behind every 204).
    if wal and not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = 1")


def _seal(conn: sqlite3.Connection) -> None:
    """Move the WAL's frames into the database file this connection opened and empty the WAL
    (best effort: a reader of the file now under the name may keep it from finishing)."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _unavailable(exc: sqlite3.DatabaseError) -> bool:
    """SQLite refused for a reason outside the program (full, locked, read-only, I/O, corrupt),
    not a bug in a statement (IntegrityError, ProgrammingError…), which must stay loud."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _transaction(conn: sqlite3.Connection, fn: Callable[[Tx], T], mode: str) -> T:
    conn.execute(f"BEGIN {mode}")
    tx = Tx(conn)
    try:
        result = fn(tx)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _group(conn: sqlite3.Connection, fns: list[Callable[[Tx], Any]]) -> list[tuple[bool, Any]]:
    """Several writers' functions in one `BEGIN IMMEDIATE … COMMIT`, each in a savepoint.

    One function's exception undoes only its own writes and is handed back to its caller; the
    others commit. Returns (True, result) or (False, exception) per function; raises (nothing
    committed) when BEGIN or COMMIT fails, or when SQLite abandoned the transaction itself.
    """
    if len(fns) == 1:
        try:
            return [(True, _transaction(conn, fns[0], "IMMEDIATE"))]
        except sqlite3.DatabaseError as exc:
            if _unavailable(exc):
                raise  # the transaction could not happen: every caller gets it
            return [(False, exc)]
        except Exception as exc:  # noqa: BLE001 - handed back to the caller
            return [(False, exc)]
    conn.execute("BEGIN IMMEDIATE")
    out: list[tuple[bool, Any]] = []
    try:
        for fn in fns:
            tx = Tx(conn)
            conn.execute("SAVEPOINT w")
            try:
                result = fn(tx)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                if not conn.in_transaction:
                    raise  # SQLite rolled everything back (a full disk, an I/O error)
                conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
                out.append((False, exc))
                continue
            conn.execute("RELEASE w")
            out.append((True, result))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


def _user_version(conn: sqlite3.Connection) -> int:
    """The number of the last migration applied (0: none)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate_sync(conn: sqlite3.Connection) -> int:
    """Apply migrations on a plain connection; each one commits together with its version."""
    version = _user_version(conn)
    for number, name, script in sql.migrations():
        if number <= version:
            continue
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise sqlite3.DatabaseError(f"migration {name} failed: {exc}") from exc
        version = number
    return version


class Database:
    """One writer connection and one reader connection on the same file.

    Writes are coalesced: functions passed to `write` while a transaction is on the writer
    thread wait, and then run together in the next one (each in its own savepoint), so the
    ingest, the worker, the scheduler and the monitors share one commit (one fsync) instead of
    queueing for one each.

    `store.pg.PgDatabase` is the same on PostgreSQL: it replaces the class attributes below and
    the methods that open, migrate and read.
    """

    #: the driver's exception class (its `unavailable` ones become DatabaseError)
    driver_error: type[Exception] = sqlite3.DatabaseError
    #: whose migrations apply (`sql.migrations`)
    engine = ""
    #: runs a group commit on the writer thread
    group: Callable[[Any, list[Callable[[Tx], Any]]], list[tuple[bool, Any]]] = staticmethod(
        _group)
    #: runs one transaction `fn(tx)` on a thread: (connection, fn, mode after BEGIN)
    transaction: Callable[[Any, Callable[[Tx], Any], str], Any] = staticmethod(_transaction)
    #: the mode of a read's transaction (one snapshot)
    read_mode = "DEFERRED"
    #: applies the pending migrations on the writer's connection
    migrator: Callable[[Any], int] = staticmethod(migrate_sync)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)  #: the database for messages
        self._writer: DatabaseThread | None = None  #: runs the writes, one transaction at a time
        self._reader: DatabaseThread | None = None  #: runs the reads, on a read-only connection
        self._queue: list[tuple[Callable[[Tx], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.files = dbfiles.Watch(path)  #: the files opened (see `watch`)
        self._sealed: Awaitable[None] | None = None

    @property
    def unreachable(self) -> str | None:
        """Why the database server cannot be reached now (`store.pg`); a file: always None."""
        return None

    @property
    def gone(self) -> str | None:
        """Why the database's files are no longer the ones opened; None while they are."""
        return self.files.gone

    def watch(self) -> None:
        """From now on, notice the database's deletion or replacement (`check_files`).

        Called once the database is migrated (its -wal and -shm exist then).
        """
        self.files.record()

    def check_files(self) -> str | None:
        """None while the files are the ones opened; else why not (`dbfiles.Watch.check`).

        The first time, the WAL is emptied into the file opened: a -wal left under the
        database's name would replay the daemon's pages onto whatever file is there at the next
        start (SQLite does not delete a WAL whose database has moved).
        """
        if self.files.gone is None and self.files.check() is not None and (
                self._writer is not None):
            self._sealed = self._writer.call(_seal)
        return self.files.gone

    async def open(self, *, create: bool = True) -> Database:
        """Open both connections and set the pragmas; create the file (0600) unless `create` is
        False, which opens only a database that exists (DatabaseError saying so otherwise)."""
        target: str | Path = self.path
        if not create:
            if not self.path.exists():
                raise dbfiles.missing(self.path)
            target = self.path.absolute().as_uri() + "?mode=rw"  # SQLite must not create it
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                dbfiles.create_private(self.path)
            self._writer = DatabaseThread("runnerd-db-writer")
            await self._writer.open(
                lambda: sqlite3.connect(target, isolation_level=None, uri=not create))
            # WAL is a property of the file: set by the daemon, never written by a command
            # into a file it is about to refuse
            await self._writer.call(_pragmas, False, create)
            self._reader = DatabaseThread("runnerd-db-reader")
            await self._reader.open(
                lambda: sqlite3.connect(target, isolation_level=None, uri=not create))
            await self._reader.call(_pragmas, True)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise errors.DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        return self

    async def close(self) -> None:
        """Close both connections and end their threads."""
        if self._sealed is not None:
            await self._sealed
        for thread in (self._reader, self._writer):
            if thread is not None:
                with contextlib.suppress(Exception):
                    await thread.stop()
        self._writer = self._reader = None

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn(tx)` atomically in a `BEGIN IMMEDIATE` transaction, returning once it is
        committed; DatabaseError if SQLite fails. `fn` may share the transaction with other
        writers' functions (see the class): its own exception undoes only its own writes."""
        if self._writer is None:
            raise errors.DatabaseError("database is closed")
        if self.gone is not None:
            raise errors.DatabaseError(self.gone)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        try:
            return await future
        except self.driver_error as exc:
            if not self.unavailable(exc):
                raise
            raise self.wrap(exc) from exc

    def unavailable(self, exc: Exception) -> bool:
        """Whether the driver's exception means the database cannot be used (`_unavailable`)."""
        return isinstance(exc, sqlite3.DatabaseError) and _unavailable(exc)

    def describe(self, exc: Exception) -> str:
        """The driver's exception, for a message."""
        return str(exc)

    def wrap(self, exc: Exception) -> errors.DatabaseError:
        """The DatabaseError saying why the database refused."""
        return errors.DatabaseError(f"database error: {self.describe(exc)} ({self.label})")

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    if self._writer is None:
                        raise errors.DatabaseError("database is closed")
                    # the whole group commit is one hop to the writer thread
                    outcomes = await self._writer.call(self.group, [fn for fn, _ in batch])
                    # Committed, but to the file the daemon opened: is it still the database?
                    # (three stat calls, ~3 µs each, per group commit; never a 204 otherwise)
                    if (gone := self.check_files()) is not None:
                        raise errors.DatabaseError(gone)
                except Exception as exc:  # noqa: BLE001 - nothing of the batch was stored
                    outcomes = [(False, exc)] * len(batch)
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    _settle(future, ok, value)
        finally:
            self._flusher = None

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn(tx)` on the read-only connection, in one snapshot."""
        if self._reader is None:
            raise errors.DatabaseError("database is closed")
        if self.gone is not None:
            raise errors.DatabaseError(self.gone)
        try:
            result: T = await self._reader.call(self.transaction, fn, self.read_mode)
        except self.driver_error as exc:
            if not self.unavailable(exc):
                raise
            raise self.wrap(exc) from exc
        return result

    async def migrate(self) -> int:
        """Apply the pending numbered migrations; return the schema version."""
        if self._writer is None:
            raise errors.DatabaseError("database is closed")
        try:
            return await self._writer.call(self.migrator)
        except self.driver_error as exc:
            raise errors.DatabaseError(
                f"cannot migrate database {self.label}: {self.describe(exc)}") from exc

    async def require_migrated(self) -> None:
        """DatabaseError unless every migration was applied: the commands other than
        `runnerd run` neither create nor migrate a database (the daemon may be running)."""
        version = await self.schema_version()
        latest = max(number for number, _, _ in sql.migrations(self.engine))
        if version < latest:
            what = "is empty" if version == 0 else (
                f"has schema version {version}, older than this runnerd's {latest}")
            raise errors.DatabaseError(f"database {self.label} {what} (start the daemon with "
                                       "'runnerd run' to migrate it)")

    async def schema_version(self) -> int:
        """The number of the last migration applied (0: none)."""
        return await self.read(lambda tx: _user_version(tx.conn))

    def sync_reader(self) -> Reader:
        """A read-only connection for the event loop's thread (cache reads while rendering)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        _pragmas(conn, readonly=True)
        return Reader(conn)


def redact(url: str) -> str:
    """A database URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


@contextlib.contextmanager
def lock(db_path: Path) -> Iterator[None]:
    """Hold `<db>.lock` for the daemon's lifetime; AlreadyRunning if another process holds it."""
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, dbfiles.MODE)
    except OSError as exc:
        raise errors.DatabaseError(f"cannot create lock file {lock_path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise errors.AlreadyRunning(
                f"another runnerd (pid {holder}) is already running on {db_path}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
