"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` package (installed by
scripts/setup-test-deps), a cluster in a temp dir listening on a Unix socket only (no TCP port),
run as the `postgres` user when the tests run as root (PostgreSQL refuses root), stopped at the
end of the session. Each test gets a fresh database on it (`Server.new_database`).
`scripts/bench --postgres` starts its server with this module too, with fsync on."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def bindir() -> Path | None:
    """The directory of initdb and pg_ctl (Debian keeps them out of PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class Server:
    """One cluster; `url(name)` is a libpq URL of one of its databases, over the socket."""

    def __init__(self, bin_dir: Path, *, fsync: bool = False) -> None:
        self.bin = bin_dir
        self.fsync = fsync  #: off for most tests (fast); on for scripts/bench (what users run) and
        #: for a server a test stops with -m immediate (a crash)
        self.dir = Path(tempfile.mkdtemp(prefix="runnerd-pg-"))
        self.data = self.dir / "data"
        self._names = itertools.count(1)
        self._user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            os.chmod(self.dir, 0o755)
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> Server:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        return self.resume()

    def resume(self) -> Server:
        """Start the cluster (again, after `halt`), on the same socket and data."""
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' "
                   f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.dir / "server.log"), "-o", options, "-w", "start")
        return self

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (`resume` starts it again): `fast` disconnects
        the clients and shuts down cleanly, `immediate` is a crash (recovery at the start)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                      "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, name: str = "postgres") -> str:
        """A libpq URL of database `name` over the Unix socket (user postgres, no password)."""
        return f"postgresql://postgres@/{name}?host={self.dir}"

    @property
    def postmaster(self) -> int | None:
        """The server's main process id (the first line of postmaster.pid), or None."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg  # noqa: PLC0415 - only the PostgreSQL tests need it

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def server(*, fsync: bool = False) -> Iterator[Server | str]:
    """A started server, or why there is none (a string). scripts/bench imports this too."""
    bin_dir = bindir()
    if bin_dir is None:
        yield "PostgreSQL is not installed (scripts/setup-test-deps installs it)"
        return
    try:
        import psycopg  # noqa: F401, PLC0415 - checked, not used here
    except ImportError:
        yield "psycopg is not installed (pip install -e '.[test]')"
        return
    s = Server(bin_dir, fsync=fsync)
    try:
        s.start()
    except subprocess.CalledProcessError as exc:
        s.stop()
        yield f"cannot start PostgreSQL: {exc.stderr.decode(errors='replace').strip()}"
        return
    try:
        yield s
    finally:
        s.stop()
