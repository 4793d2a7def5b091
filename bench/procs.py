"""Processes of the bench: runnerd on a temp config, the peers, the load generator; cleanup.

Every child is started in its own session and recorded in `Procs`; `Procs.close()` (called from
a `finally`, so also on Ctrl-C) sends SIGTERM, waits a bounded time, then SIGKILLs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

#: CPUs: the server under test on one, the load generator on the other (2-core machine).
SERVER_CPU = 0
CLIENT_CPU = 1

#: The ~20-line Liquid task of the end-to-end figure: arithmetic over the order's lines, filters,
#: a cache read, a log, and one cache action.
E2E_TASK = """\
{% assign order = event.data %}
{% assign total = 0 %}
{% assign items = 0 %}
{% for line in order.lines %}
  {% assign subtotal = line.qty | times: line.price %}
  {% assign total = total | plus: subtotal %}
  {% assign items = items | plus: line.qty %}
{% endfor %}
{% assign customer = order.customer | strip | downcase %}
{% if total > 100 %}
  {% assign tier = "big" %}
{% elsif total > 10 %}
  {% assign tier = "medium" %}
{% else %}
  {% assign tier = "small" %}
{% endif %}
{% capture summary %}{{ customer }}:{{ items }}:{{ total | round: 2 }}:{{ tier }}{% endcapture %}
{% assign previous = cache["bench:last"] %}
{% log summary: summary, previous: previous %}
{% action "cache", "set", "bench:last", summary %}
"""

E2E_BODY = json.dumps({
    "id": 1001, "customer": "  Ada Lovelace ",
    "lines": [{"sku": "A", "qty": 2, "price": 9.5}, {"sku": "B", "qty": 1, "price": 42.0},
              {"sku": "C", "qty": 3, "price": 1.25}],
})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int) -> list[str]:
    """A taskset prefix (empty when the machine has fewer CPUs or no taskset)."""
    if os.cpu_count() and os.cpu_count() >= 2 and Path("/usr/bin/taskset").exists():  # type: ignore[operator]
        return ["taskset", "-c", str(cpu)]
    return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Procs:
    """Children of the bench; all of them stopped by `close()`."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[Any]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 20.0) -> int | None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if proc in self.children:
            self.children.remove(proc)
        return proc.returncode

    def run_json(self, argv: Sequence[str], timeout: float) -> dict[str, Any]:
        """Run a child to completion (bounded) and parse the JSON it prints."""
        proc = self.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, timeout=2)
            raise RuntimeError(f"{argv[:4]}... did not finish in {timeout:.0f}s") from None
        finally:
            if proc in self.children:
                self.children.remove(proc)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"{' '.join(argv[:6])}... printed no result "
                               f"(exit {proc.returncode}): {err.decode()[-2000:]}")
        return json.loads(lines[-1])

    def close(self) -> None:
        for proc in list(self.children):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 15
        for proc in list(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait(timeout=5)
        self.children.clear()


def loadgen(procs: Procs, port: int, path: str, *, mode: str, duration: float,
            conns: int = 64, warmup: float = 1.0, rate: float = 500.0, body: str = E2E_BODY,
            max_requests: int = 0) -> dict[str, Any]:
    argv = [*pin(CLIENT_CPU), PY, "-m", "bench.loadgen", "--port", str(port), "--path", path,
            "--mode", mode, "--conns", str(conns), "--duration", str(duration),
            "--warmup", str(warmup), "--rate", str(rate), "--body", body,
            "--max-requests", str(max_requests)]
    return procs.run_json(argv, timeout=warmup + duration + 90)


def runnerd_config(tmp: Path, port: int, db: Path | str, *, extra_tasks: int = 0,
                   concurrency: int = 8, extra: Sequence[str] = ()) -> Path:
    """A config with the e2e task and the webhooks of the bench (+ `extra_tasks` filler tasks,
    + `extra` top-level lines); `db` a SQLite file or a PostgreSQL URL."""
    lines = [
        f"database: {db}",
        *extra,
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"concurrency: {concurrency}",
        "email: {transport: outbox, from: bench@example.com}",
        "webhooks:",
        "  - {name: ingest, topic: user/bench/ingest}",
        "  - {name: e2e, topic: user/bench/e2e}",
        "tasks:",
        "  - name: bench e2e",
        "    subscriptions: |",
        "      user/bench/e2e",
        "    code: |",
        *("      " + ln for ln in E2E_TASK.splitlines()),
    ]
    for i in range(extra_tasks):
        lines += [
            f"  - name: filler {i:03d}",
            "    subscriptions: |",
            f"      user/filler{i:03d}/created",
            "      mechanic/scheduler/daily",
            "    code: |",
            *("      " + ln for ln in E2E_TASK.replace("bench:last", f"filler:{i}").splitlines()),
        ]
    path = tmp / f"runnerd-{port}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Runnerd:
    """`python -m runnerd run -c CONFIG`, pinned to the server CPU."""

    def __init__(self, procs: Procs, tmp: Path, db: Path, *, extra_tasks: int = 0,
                 concurrency: int = 8, launcher: Sequence[str] = ("-m", "runnerd"),
                 url: str | None = None, extra: Sequence[str] = ()) -> None:
        self.procs = procs
        self.launcher = list(launcher)  #: how Python starts runnerd (experiments may wrap it)
        self.tmp = tmp
        self.db = db
        self.port = free_port()
        self.config = runnerd_config(tmp, self.port, url or db, extra_tasks=extra_tasks,
                                     concurrency=concurrency, extra=extra)
        self.log = tmp / f"runnerd-{self.port}.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.notify_sock: socket.socket | None = None
        self.started_at = 0.0

    def start(self, timeout: float = 30.0) -> dict[str, float | None]:
        """Start and wait until it serves; return {ready_s, health_s, port_s} since spawn."""
        notify_path = self.tmp / f"notify-{self.port}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        sock.setblocking(False)
        self.notify_sock = sock
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        env.pop("RUNNERD_CONFIG", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log, "ab") as out:
            self.started_at = time.perf_counter()
            self.proc = self.procs.start(
                [*pin(SERVER_CPU), PY, *self.launcher, "run", "-c", str(self.config)],
                stdout=out, stderr=out, env=env, cwd=self.tmp)
        times: dict[str, float | None] = {"ready_s": None, "port_s": None, "health_s": None}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runnerd exited {self.proc.returncode}:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            now = time.perf_counter() - self.started_at
            if times["ready_s"] is None:
                try:
                    if b"READY=1" in sock.recv(4096):
                        times["ready_s"] = now
                except BlockingIOError:
                    pass
            if times["port_s"] is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                        times["port_s"] = now
                except OSError:
                    pass
            if times["port_s"] is not None and times["health_s"] is None:
                status = self.get_status("/health")
                if status == 200:
                    times["health_s"] = time.perf_counter() - self.started_at
                elif status == 404:
                    times["health_s"] = float("nan")  # no /health endpoint (yet)
            if times["port_s"] is not None and times["health_s"] is not None and (
                    times["ready_s"] is not None or now > 5):
                break
            time.sleep(0.002)
        else:
            raise RuntimeError(f"runnerd did not come up within {timeout:.0f}s")
        return times

    def get_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except OSError:
            return None

    @property
    def pid(self) -> int:
        """The Python process's pid (taskset execs it, so it is the same pid)."""
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, timeout=30)
            self.proc = None
        if self.notify_sock is not None:
            self.notify_sock.close()
            self.notify_sock = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute(sql, tuple(params)).fetchall()
        finally:
            conn.close()

    def wait_count(self, sql: str, params: Sequence[Any], target: int, timeout: float,
                   interval: float = 0.1) -> int:
        """Poll a COUNT query until it reaches `target` or `timeout` passes; return the count."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n = int(self.query(sql, params)[0][0])
            if n >= target:
                return n
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"runnerd exited {self.proc.returncode}")
            time.sleep(interval)
        return n

    def wait_idle(self, timeout: float) -> bool:
        """Until no run is due, scheduled or started (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # One count per state, so each uses its partial index (an IN list would scan).
            n = self.query("SELECT (SELECT COUNT(*) FROM runs WHERE state = 'due') + "
                           "(SELECT COUNT(*) FROM runs WHERE state = 'started')")[0][0]
            if n == 0:
                return True
            time.sleep(0.1)
        return False


def make_history(db: Path, runs_total: int, *, now: float | None = None,
                 seed: int = 7) -> dict[str, Any]:
    """Fill a fresh, migrated database with `runs_total` finished runs (event → task → action
    trees, as the daemon writes them), spread over the last 10 days (inside retention, so the
    janitor keeps them). Direct SQL, one transaction, synchronous off: seconds, not minutes."""
    sys.path.insert(0, str(ROOT))
    from runnerd.store import db as rdb

    now = time.time() if now is None else now
    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None)
    t0 = time.perf_counter()
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        rdb.migrate_sync(conn)
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -200000")
        trees = runs_total // 3
        span = 10 * 86400
        data = json.loads(E2E_BODY)
        event_sql = ("INSERT INTO events (id, topic, data, source, webhook_request_id, "
                     "created_at) VALUES (?, 'user/bench/e2e', ?, 'webhook', ?, ?)")
        run_sql = ("INSERT INTO runs (kind, state, priority, run_at, event_id, task_name, "
                   "action_type, options, result, error, attempts, task_run_id, created_at, "
                   "started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)")
        data_text = json.dumps(data)
        conn.execute("BEGIN")
        next_id = 1 + (conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0])
        batch = 20_000
        made = 0
        while made < trees:
            n = min(batch, trees - made)
            events, rows = [], []
            for k in range(n):
                at = now - span + span * (made + k) / trees
                eid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                events.append((eid, data_text, str(uuid.uuid4()), at))
                failed = rng.random() < 0.01
                task_id = next_id + 1
                next_id += 3
                rows.append(("event", "succeeded", 1, at, eid, None, None, None,
                             '{"tasks": ["bench e2e"]}', None, None, at, at + 0.001, at + 0.002))
                rows.append(("task", "succeeded", 2, at + 0.002, eid, "bench e2e", None, None,
                             '{"logs": [], "errors": [], "actions": 1}', None, None,
                             at + 0.002, at + 0.003, at + 0.004))
                rows.append(("action", "failed" if failed else "succeeded", 3, at + 0.004, eid,
                             "bench e2e", "cache", '["set", "bench:last", "ada:6:64.75:medium"]',
                             None if failed else '"ada:6:64.75:medium"',
                             "cache: boom" if failed else None, task_id, at + 0.004,
                             at + 0.005, at + 0.006))
            conn.executemany(event_sql, events)
            conn.executemany(run_sql, rows)
            made += n
        conn.execute("COMMIT")
        # No ANALYZE: the daemon never runs one, so the planner sees what it sees in production.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"runs": trees * 3, "events": trees, "seconds": time.perf_counter() - t0,
            "bytes": db.stat().st_size}
