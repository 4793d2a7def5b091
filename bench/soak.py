"""The soak: a million runs through a real daemon with retention that applies within seconds.

    scripts/soak              1,000,000 runs (about 15 minutes on 2 cores), claim at 0 and 1M
    scripts/soak --quick      50,000 runs, history of 200,000 for the claim (under 2 minutes)
    python -m bench.soak --runs N --retention-days D --janitor-every S --json OUT

How it works (nothing is simulated):
- `runnerd run` on a fresh database in a temp directory, with one webhook and the bench's
  ~20-line Liquid task (one cache action), `retention_days` and `retention_days_failed` set to
  `--retention-days` (default 0.0001 days = 8.6 s): a finished tree expires seconds after it
  completed, as it would 15 days after on a real clock.
- Retention is the daemon's own janitor, whose period (scheduler.JANITOR_SECONDS, 60 s) the
  launcher shortens to `--janitor-every` (default 1 s) to match the shortened retention; that is
  the only change to the daemon. `--prune-every S` also runs `retention.prune` (the code of
  `runnerd prune`) from a separate process, as an operator's cron job would.
- This process posts webhooks over keep-alive connections on 127.0.0.1 (3 runs each: event,
  task, action) as fast as the daemon takes them, holding the queue under `--backlog` open runs,
  until the daemon has created `--runs` runs; then it waits for the queue to drain and stops the
  daemon with SIGTERM (exit 0 expected) and runs PRAGMA quick_check.
- `--samples` times on the way (and at half way and the end) it prints the runs done, runs/s,
  the database file size, its size once checkpointed (pages) and free pages, the WAL size, the
  daemon's RSS and the rows left in `runs`.
- The claim: EXPLAIN QUERY PLAN and timing of the worker's claim statements (promote_scheduled
  and the claim query from runnerd/sql/queries.sql, in a transaction rolled back, 200 times
  after 20 warm-up rounds) with 1000 due runs, on an empty database and on one holding
  `--history` finished runs written by direct SQL (`bench.procs.make_history`): the claim must
  search the partial index runs_due.

The file and RSS figures at half way and at the end are what the plateau claims rest on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen, procs

RETENTION_DAYS = 0.0001  #: 8.64 s
QUICK_RETENTION_DAYS = 0.000002  #: 0.17 s: trees expire at once (the pytest soak)
RUNS_PER_WEBHOOK = 3
Log = Callable[[str], None]


def config_text(db: Path, port: int, retention_days: float) -> str:
    """The soak daemon's configuration: one webhook, the bench's e2e task."""
    lines = [
        f"database: {db}",
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        "concurrency: 8",
        # Fixed-point: PyYAML reads 1e-05 as a string.
        f"retention_days: {retention_days:.10f}",
        f"retention_days_failed: {retention_days:.10f}",
        "webhooks:",
        "  - {name: soak, topic: user/bench/e2e}",
        "tasks:",
        "  - name: soak e2e",
        "    subscriptions: |",
        "      user/bench/e2e",
        "    code: |",
        *("      " + ln for ln in procs.E2E_TASK.splitlines()),
    ]
    return "\n".join(lines) + "\n"


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- the claim ---------------------------------------------------------------------------------

def claim_sql() -> tuple[str, str]:
    """(name, SQL) of the claim statement in runnerd/sql/queries.sql."""
    from runnerd.store import sql

    for name in ("claim", "claim_runs"):
        if name in sql.queries:
            return name, sql.queries[name]
    name = next(n for n in sql.queries if n.startswith("claim"))
    return name, sql.queries[name]


def claim_probe(path: Path, history: int, *, due: int = 1000, reps: int = 200,
                log: Log = print) -> dict[str, Any]:
    """Plan and time the claim with `due` due runs and `history` finished runs in the table."""
    from runnerd.queue import runs
    from runnerd.store import db as rdb
    from runnerd.store import sql

    made: dict[str, Any] = {}
    if history:
        log(f"claim: writing {history:,} finished runs of history ...")
        made = procs.make_history(path, history)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rdb.migrate_sync(conn)
        now = time.time()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO events (id, topic, source, created_at) "
                     "VALUES ('claim-probe', 'user/claim/probe', 'cli', ?)", (now,))
        conn.executemany(
            "INSERT INTO runs (kind, state, priority, run_at, event_id, task_name, action_type, "
            "options, created_at) VALUES ('action', 'due', 3, ?, 'claim-probe', 't', 'echo', "
            "'{}', ?)", [(now + i * 1e-6, now) for i in range(due)])
        conn.execute("COMMIT")
        name, claim = claim_sql()
        params = {"now": now + 1, "limit": 64, "event_limit": 64, **runs.PRIORITIES}
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + claim, params)]
        promote_plan = [row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + sql.queries["promote_scheduled"], params)]
        times = []
        for i in range(reps + 20):  # the first 20 warm the page cache and are not counted
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql.queries["promote_scheduled"], params)
            claimed = conn.execute(claim, params).fetchall()
            conn.execute("ROLLBACK")
            if i >= 20:
                times.append(time.perf_counter() - t0)
        assert len(claimed) == 64, len(claimed)
        finished = conn.execute("SELECT COUNT(*) FROM runs WHERE state IN "
                                "('succeeded', 'failed')").fetchone()[0]
    finally:
        conn.close()
    times.sort()
    return {"query": name, "finished_runs": finished, "due_runs": due,
            "plan": " | ".join(plan), "promote_plan": " | ".join(promote_plan),
            # "SCAN runs USING INDEX runs_due" walks the partial index (due runs only, in claim
            # order, stopping at the LIMIT); a bare "SCAN runs" would read the whole table.
            "uses_runs_due": any("runs_due" in p for p in plan)
            and not any(p.strip() == "SCAN runs" for p in plan),
            "median_ms": statistics.median(times) * 1000,
            "p95_ms": times[int(0.95 * len(times))] * 1000,
            "history_bytes": made.get("bytes", file_size(path))}


# --- the stream ---------------------------------------------------------------------------------

class Stream:
    """Webhooks into the daemon under flow control, samples, and the periodic prune."""

    def __init__(self, *, db: Path, config: Path, port: int, pid: int, runs: int, conns: int,
                 backlog: int, prune_every: float, samples: int, log: Log) -> None:
        self.db, self.config, self.port, self.pid = db, config, port, pid
        self.target, self.conns, self.backlog = runs, conns, backlog
        self.prune_every, self.samples, self.log = prune_every, samples, log
        self.accepted = 0
        self.statuses: dict[int | str, int] = {}
        self.open_runs = 0
        self.created = 0
        self.pruned: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []
        self.done = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10,
                                      isolation_level=None)
        self.t0 = time.perf_counter()

    def counts(self) -> tuple[int, int]:
        """(runs ever created, runs not finished); the partial indexes keep both cheap."""
        created = self.reader.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'runs'), 0)"
        ).fetchone()[0]
        open_runs = self.reader.execute(
            "SELECT (SELECT COUNT(*) FROM runs WHERE state = 'due') + (SELECT COUNT(*) FROM runs "
            "WHERE state = 'started') + (SELECT COUNT(*) FROM runs WHERE state = 'scheduled')"
        ).fetchone()[0]
        return int(created), int(open_runs)

    def sample(self, label: str) -> dict[str, Any]:
        created, open_runs = self.counts()
        elapsed = time.perf_counter() - self.t0
        row = {
            "label": label, "seconds": round(elapsed, 1), "runs": created - open_runs,
            "runs_per_s": round((created - open_runs) / elapsed, 1) if elapsed else 0.0,
            "db_bytes": file_size(self.db), "wal_bytes": file_size(Path(f"{self.db}-wal")),
            # The size the file has once the WAL is checkpointed (what a reader sees), which
            # does not depend on when the last checkpoint happened.
            "db_pages_bytes": self.reader.execute("PRAGMA page_count").fetchone()[0]
            * self.reader.execute("PRAGMA page_size").fetchone()[0],
            "free_pages": self.reader.execute("PRAGMA freelist_count").fetchone()[0],
            "rss_kib": procs.rss_kib(self.pid) or 0,
            "rows_runs": self.reader.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
            "open_runs": open_runs,
        }
        self.rows.append(row)
        self.log(f"{label:>6} {row['seconds']:>8.1f}s {row['runs']:>10,} runs "
                 f"{row['runs_per_s']:>7.0f}/s  db {row['db_bytes'] / 2**20:7.1f} MiB  "
                 f"pages {row['db_pages_bytes'] / 2**20:6.1f} MiB (free {row['free_pages']:>5}) "
                 f"wal {row['wal_bytes'] / 2**20:6.1f} MiB  rss {row['rss_kib'] / 1024:6.1f} MiB"
                 f"  rows in runs {row['rows_runs']:>8,}  open {open_runs:>6,}")
        return row

    async def sender(self, request: bytes) -> None:
        conn = await loadgen.connect("127.0.0.1", self.port)
        try:
            while self.accepted * RUNS_PER_WEBHOOK < self.target:
                await self.room.wait()
                try:
                    status = await asyncio.wait_for(conn.request(request), loadgen.REQUEST_TIMEOUT)
                except (ConnectionError, TimeoutError) as exc:
                    self.statuses[type(exc).__name__] = self.statuses.get(
                        type(exc).__name__, 0) + 1
                    if conn.transport is not None:
                        conn.transport.close()
                    await asyncio.sleep(0.05)
                    conn = await loadgen.connect("127.0.0.1", self.port)
                    continue
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 204:
                    self.accepted += 1
        finally:
            if conn.transport is not None:
                conn.transport.close()

    async def watcher(self) -> None:
        """Flow control and samples, ten times a second, until the target is done."""
        marks = [self.target * (i + 1) / self.samples for i in range(self.samples)]
        half = self.target / 2
        half_taken = False
        while True:
            self.created, self.open_runs = self.counts()
            if self.open_runs > self.backlog:
                self.room.clear()
            else:
                self.room.set()
            finished = self.created - self.open_runs
            if not half_taken and finished >= half:
                half_taken = True
                self.sample("half")
            while marks and finished >= marks[0]:
                marks.pop(0)
                if marks:
                    self.sample(f"{100 - 100 * len(marks) // self.samples}%")
            if finished >= self.target:
                self.sample("end")
                self.done.set()
                return
            await asyncio.sleep(0.1)

    def pruner(self, proc: subprocess.Popen[str]) -> None:
        """Sum what the prune loop (its own process) reports, one JSON line per prune."""
        assert proc.stdout is not None
        for line in proc.stdout:
            for key, value in json.loads(line).items():
                self.pruned[key] = self.pruned.get(key, 0) + value

    async def run(self) -> None:
        request = loadgen.build_request("127.0.0.1", self.port, "/webhooks/soak",
                                        procs.E2E_BODY.encode())
        self.sample("start")
        pm = procs.Procs()
        reader = None
        if self.prune_every > 0:
            # Its own process, as a cron job would be: the senders' GIL never delays it.
            proc = pm.start([procs.PY, "-m", "bench.soak", "--prune-loop", str(self.config),
                             "--prune-every", str(self.prune_every)], stdout=subprocess.PIPE,
                            text=True, cwd=procs.ROOT)
            reader = threading.Thread(target=self.pruner, args=(proc,), name="pruner")
            reader.start()
        tasks = [asyncio.create_task(self.watcher(), name="watcher")]
        tasks += [asyncio.create_task(self.sender(request)) for _ in range(self.conns)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            pm.close()
            if reader is not None:
                reader.join(60)


def prune_loop(config_path: str, every: float) -> int:
    """`retention.prune` (the code of `runnerd prune`) every `every` seconds until SIGTERM; one JSON
    line of counts per prune on stdout."""
    from runnerd import config
    from runnerd.queue import retention
    from runnerd.store import db

    settings = config.load(config_path, {})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    async def loop() -> None:
        database = await db.Database(settings.database).open()
        try:
            while not stop.wait(every):
                out = await retention.prune(database, settings, time.time())
                print(json.dumps(out), flush=True)
        finally:
            await database.close()

    asyncio.run(loop())
    return 0


#: Starts `runnerd run` with the janitor's period (scheduler.JANITOR_SECONDS, 60 s) replaced by
#: the first argument: with retention in seconds, the janitor must come round in seconds too.
LAUNCH = ("import sys; from runnerd import cli; from runnerd.engine import scheduler; "
          "scheduler.JANITOR_SECONDS = float(sys.argv.pop(1)); sys.exit(cli.main(sys.argv[1:]))")


def _start_daemon(pm: procs.Procs, tmp: Path, config: Path, port: int, log_path: Path,
                  janitor_every: float) -> subprocess.Popen[Any]:
    env = {**os.environ, "PYTHONPATH": str(procs.ROOT)}
    env.pop("RUNNERD_CONFIG", None)
    env.pop("NOTIFY_SOCKET", None)
    launcher = ["-m", "runnerd"] if janitor_every <= 0 else ["-c", LAUNCH, str(janitor_every)]
    with open(log_path, "ab") as out:
        proc = pm.start([procs.PY, *launcher, "run", "-c", str(config)], stdout=out,
                        stderr=out, env=env, cwd=tmp)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runnerd exited {proc.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("runnerd did not start listening within 30 s")


def run(tmp: Path, *, runs: int, retention_days: float = RETENTION_DAYS,
        janitor_every: float = 1.0, prune_every: float = 0.0, samples: int = 10, conns: int = 4, backlog: int = 3000,
        measure_claim: bool = True, history: int = 1_000_000,
        log: Log = print) -> dict[str, Any]:
    """Push `runs` runs through a real daemon in `tmp`; return every figure (see the module)."""
    tmp.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"target_runs": runs, "retention_days": retention_days,
                              "janitor_every": janitor_every, "prune_every": prune_every}
    if measure_claim:
        result["claim"] = {"empty": claim_probe(tmp / "claim-empty.db", 0, log=log)}
    db_path = tmp / "soak.db"
    port = procs.free_port()
    config = tmp / "soak.yaml"
    config.write_text(config_text(db_path, port, retention_days))
    pm = procs.Procs()
    log_path = tmp / "soak-daemon.log"
    began = time.perf_counter()
    try:
        daemon = _start_daemon(pm, tmp, config, port, log_path, janitor_every)
        stream = Stream(db=db_path, config=config, port=port, pid=daemon.pid, runs=runs,
                        conns=conns, backlog=backlog, prune_every=prune_every, samples=samples,
                        log=log)
        log(f"soak: {runs:,} runs, retention {retention_days} days "
            f"({retention_days * 86400:.2f} s), janitor every {janitor_every} s, external prune "
            f"every {prune_every or '-'} s, daemon pid "
            f"{daemon.pid}, database {db_path}")
        asyncio.run(stream.run())
        seconds = time.perf_counter() - began
        halves = [next(r for r in stream.rows if r["label"] == "half"),
                  next(r for r in stream.rows if r["label"] == "end")]
        # Drain what is left, prune once more, and stop the daemon cleanly.
        deadline = time.monotonic() + 120
        while stream.counts()[1] and time.monotonic() < deadline:
            time.sleep(0.1)
        final = stream.sample("final")
        stream.reader.close()
        code = pm.stop(daemon, timeout=60)
        if code != 0:
            raise RuntimeError(f"runnerd exited {code} on SIGTERM:\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        conn = sqlite3.connect(db_path)
        try:
            rows_left = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                         for t in ("events", "runs", "run_attempts", "cache", "monitor_flips",
                                   "outbox", "workers", "scheduler_slots")}
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
        result.update({
            "runs": final["runs"], "seconds": round(seconds, 1),
            "runs_per_s": round(final["runs"] / seconds, 1), "webhooks": stream.accepted,
            "statuses": {str(k): v for k, v in stream.statuses.items()},
            "samples": stream.rows, "halves": halves, "final": final,
            "pruned": stream.pruned, "rows_left": rows_left,
            "runs_pruned": final["runs"] - rows_left["runs"], "quick_check": check,
            "daemon_exit": code,
        })
    finally:
        pm.close()
    if measure_claim:
        result["claim"]["history"] = claim_probe(tmp / "claim-history.db", history, log=log)
        (tmp / "claim-history.db").unlink(missing_ok=True)
        Path(f"{tmp / 'claim-history.db'}-wal").unlink(missing_ok=True)
        Path(f"{tmp / 'claim-history.db'}-shm").unlink(missing_ok=True)
    return result


def report(result: dict[str, Any]) -> str:
    """The figures as Markdown, for the README."""
    first, second = result["halves"]
    lines = [
        (f"- {result['runs']:,} runs ({result['webhooks']:,} webhooks) in {result['seconds']:,} s:"
         f" {result['runs_per_s']:,} runs/s; retention {result['retention_days']} days, janitor "
         f"every {result['janitor_every']} s, external prune every {result['prune_every']} s; "
         f"webhook answers {result['statuses']}"),
        "",
        "| at | runs done | runs/s | db file | WAL | daemon RSS | rows in runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["samples"]:
        lines.append(f"| {r['label']} ({r['seconds']} s) | {r['runs']:,} | {r['runs_per_s']:,} |"
                     f" {r['db_bytes'] / 2**20:.1f} MiB | {r['wal_bytes'] / 2**20:.1f} MiB |"
                     f" {r['rss_kib'] / 1024:.1f} MiB | {r['rows_runs']:,} |")
    lines.append("")
    lines.append(f"- plateau: db+WAL at the end / at half way = "
                 f"{(second['db_bytes'] + second['wal_bytes']) / (first['db_bytes'] + first['wal_bytes']):.2f}; "
                 f"RSS {second['rss_kib'] / first['rss_kib']:.2f}")
    lines.append(f"- runs deleted by retention: {result['runs_pruned']:,}; by the external prune: "
                 f"{json.dumps(result['pruned'])}; rows left after the drain: "
                 f"{json.dumps(result['rows_left'])}; quick_check {result['quick_check']}")
    for c in result.get("claim", {}).values():
        lines.append(f"- claim ({c['query']} + promote_scheduled, 64 of {c['due_runs']} due) "
                     f"with {c['finished_runs']:,} finished runs: median {c['median_ms']:.3f} ms,"
                     f" p95 {c['p95_ms']:.3f} ms; plan: `{c['plan']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="50,000 runs and 200,000 runs of history (under 2 minutes)")
    p.add_argument("--runs", type=int, default=None, help="runs to push (default 1,000,000)")
    p.add_argument("--history", type=int, default=None,
                   help="finished runs in the database of the second claim measurement")
    p.add_argument("--retention-days", type=float, default=RETENTION_DAYS)
    p.add_argument("--janitor-every", type=float, default=1.0,
                   help="the daemon's janitor period in seconds (runnerd's is 60; 0: unchanged)")
    p.add_argument("--prune-every", type=float, default=0.0,
                   help="also run `runnerd prune`'s code from another process every S seconds")
    p.add_argument("--backlog", type=int, default=500, help="open runs before sending pauses")
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--samples", type=int, default=20, help="samples printed on the way")
    p.add_argument("--no-claim", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    p.add_argument("--prune-loop", metavar="CONFIG", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = p.parse_args(argv)
    if args.prune_loop:
        return prune_loop(args.prune_loop, args.prune_every)
    runs = args.runs or (50_000 if args.quick else 1_000_000)
    history = args.history or (200_000 if args.quick else 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="runnerd-soak-"))
    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM: stop the daemon and clean up, as Ctrl-C does

    signal.signal(signal.SIGTERM, on_signal)
    try:
        result = run(tmp, runs=runs, retention_days=args.retention_days,
                     janitor_every=args.janitor_every, prune_every=args.prune_every, conns=args.conns, backlog=args.backlog,
                     samples=args.samples,
                     measure_claim=not args.no_claim, history=history,
                     log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"soak: interrupted; files in {tmp}" if args.keep else "soak: interrupted",
              file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(report(result), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    bad = [phase for phase, c in result.get("claim", {}).items() if not c["uses_runs_due"]]
    if bad:
        print(f"soak: the claim does not search runs_due ({', '.join(bad)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
