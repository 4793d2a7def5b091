"""The database's files on disk: created private, watched while the daemon runs, and copied by
`runnerd backup` (with the leftovers of backups that were killed).

SQLite works on file descriptors: a database file deleted or replaced under the daemon goes on
taking commits into an inode nobody will open again. `Watch` notices it (three `stat` calls, ~3 µs
each) so that no 204 is answered for such a commit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from runnerd import errors

logger = logging.getLogger(__name__)

#: Mode of the files runnerd creates: the database (SQLite gives its -wal and -shm the same
#: mode), the lock file and backups. Existing files keep theirs.
MODE = 0o600
#: The suffix of a backup's copy in progress: `.{target name}.{pid}.partial`, beside the target.
PARTIAL = ".partial"
_PARTIAL_NAME = re.compile(r"\..+\.(\d+)\.partial(-journal|-wal|-shm)?")


def create_private(path: Path) -> None:
    """Create `path` empty with MODE unless it exists (SQLite would create it 0644)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, MODE))
    except FileExistsError:
        pass  # SQLite opens it as it is (even read-only, to say so in its words)


def missing(path: Path) -> errors.DatabaseError:
    """The error of a command that needs the database at `path`, where there is none."""
    return errors.DatabaseError(f"database {path} does not exist (start the daemon with "
                                "'runnerd run' to create it)")


class Watch:
    """Whether the database, its -wal and its -shm are still the files the daemon opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids: dict[str, tuple[int, int]] = {}  #: name → (st_dev, st_ino)
        #: why the files are no longer the ones opened (deleted, replaced); None while they are
        self.gone: str | None = None

    def record(self) -> None:
        """Note the files' identities; call it once they are open (in WAL mode the -wal and
        -shm exist from the first transaction on, as long as a connection is open)."""
        for name in (str(self.path), f"{self.path}-wal", f"{self.path}-shm"):
            try:
                st = os.stat(name)
            except FileNotFoundError:
                continue
            self._ids[name] = (st.st_dev, st.st_ino)

    def check(self) -> str | None:
        """None while every recorded file is still there; else why not, logged once as an ERROR.

        Once gone, gone for good: a new file under the same name is not the database whose
        commits were acknowledged, and SQLite keeps writing to the old one: runnerd must be
        restarted.
        """
        if self.gone is not None:
            return self.gone
        for name, identity in self._ids.items():
            try:
                st = os.stat(name)
            except OSError as exc:
                what = "was deleted" if exc.errno == errno.ENOENT else (
                    f"cannot be checked ({exc.strerror})")
            else:
                if (st.st_dev, st.st_ino) == identity:
                    continue
                what = "was replaced by another file"
            self.gone = f"database file {name} {what} while runnerd ran: restart runnerd"
            logger.error("%s; until then nothing is stored and webhooks get 503", self.gone,
                         extra={"action": "database_gone"})
            break
        return self.gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False
    return True


def remove_stale_partials(directory: Path) -> None:
    """Remove the copies that backups killed part-way left in `directory` (their pid is gone);
    a running backup's copy stays."""
    try:
        names = os.listdir(directory)
    except OSError:
        return  # no such directory: the caller says so
    for name in names:
        match = _PARTIAL_NAME.fullmatch(name)
        if match is None or _alive(int(match[1])):
            continue
        try:
            os.unlink(directory / name)
        except FileNotFoundError:  # another process removed it first
            continue
        except OSError as exc:
            logger.warning("cannot remove %s left by an interrupted backup: %s",
                           directory / name, exc.strerror, extra={"action": "backup_stale"})
            continue
        logger.warning("removed %s left by an interrupted backup", directory / name,
                       extra={"action": "backup_stale"})


def backup(source: Path, target: str | os.PathLike[str]) -> int:
    """Copy the database with SQLite's online backup API (consistent while the daemon writes).

    The copy is one read snapshot: copied in steps, SQLite restarts a backup whenever another
    connection writes, so under a steady webhook load a large file would never finish. It is
    written as `publish` says and becomes a standalone file (rollback journal, no -wal).
    Returns the copy's page count.
    """
    target = Path(target)
    if not source.exists():
        raise missing(source)

    def copy(partial: Path) -> int:
        try:
            src = sqlite3.connect(source, timeout=30)
            try:
                dst = sqlite3.connect(partial, isolation_level=None)
                try:
                    src.backup(dst)
                    dst.execute("PRAGMA journal_mode = DELETE")
                    return int(dst.execute("PRAGMA page_count").fetchone()[0])
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as exc:
            raise errors.DatabaseError(f"backup failed: {exc}") from exc

    return publish(target, copy)


def publish(target: Path, write: Callable[[Path], int]) -> int:
    """Make a backup at `target` with `write(partial)`, which fills the hidden file `partial`
    beside it and returns a count for the user; returns it.

    The file is synced and then linked to `target`, which is never overwritten: a failure at any
    point leaves nothing behind (a kill leaves the hidden file, which the next backup removes:
    `remove_stale_partials`).
    """
    remove_stale_partials(target.parent)
    try:
        taken, has_directory = target.exists() or target.is_symlink(), target.parent.is_dir()
    except OSError as exc:  # a name too long for the file system
        raise errors.InvalidInput(f"cannot write {target}: {exc.strerror}") from None
    if taken:
        raise errors.InvalidInput(f"{target} exists: give a new file name")
    if not has_directory:
        raise errors.InvalidInput(f"cannot write {target}: no directory {target.parent}")
    partial = target.with_name(f".{target.name}.{os.getpid()}{PARTIAL}")
    try:
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE))
    except OSError as exc:
        raise errors.InvalidInput(f"cannot write {target}: {exc.strerror}") from None
    try:
        count = write(partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(partial, target)  # unlike rename, fails rather than replace a file made meanwhile
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except FileExistsError:
        raise errors.InvalidInput(f"{target} exists: give a new file name") from None
    except OSError as exc:
        raise errors.DatabaseError(f"backup failed: {target}: {exc.strerror}") from exc
    finally:
        for leftover in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{partial}{leftover}")
    return count
