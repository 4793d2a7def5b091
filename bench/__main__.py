"""`scripts/bench [--quick] [--postgres]`: SPEC §12, runnerd beside its baselines, one table.

Phases (each figure repeated, median and min–max reported):
  f  start-up with 100 tasks (fresh database each time)
  e  idle RSS of a fresh daemon
  b  end to end on an empty database vs huey's SqliteHuey draining no-op tasks
  e  RSS after the first 10k runs
  c  latency at 500 events/s, open loop
  a  webhook ingest req/s vs a bare aiohttp handler (interleaved)
  e  soak: more end-to-end load, RSS again (leak check)
  d  the end-to-end figure again on a database holding 1M finished runs (100k with --quick)
  g  --postgres: one node on PostgreSQL vs SQLite, CPU per pipeline of each side, idle RSS
  h  --postgres: one vs two nodes on one database, and a projection (bench/postgres.py)

The server under test is pinned to CPU 0 and the load generator to CPU 1. Everything runs on
127.0.0.1, every wait is bounded, and the whole bench has a hard time limit; children and the
temp directory are removed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import Row, median, percentile, ratio, render_table
from bench.postgres import bench_postgres
from bench.procs import (
    CLIENT_CPU,
    E2E_BODY,
    PY,
    ROOT,
    SERVER_CPU,
    Procs,
    Runnerd,
    cpu_seconds,
    free_port,
    loadgen,
    make_history,
    pin,
)

RESULTS = ROOT / "bench-results"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one bench run."""

    quick: bool
    reps: int
    startup_reps: int
    ingest_seconds: float
    e2e_events: int
    huey_tasks: int
    latency_seconds: float
    history_runs: int
    soak_seconds: float
    time_limit: int
    pg_events: int = 0  #: events per end-to-end repetition on PostgreSQL (0: no PostgreSQL rows)

    @staticmethod
    def make(quick: bool, postgres: bool = False) -> Plan:
        if quick:
            return Plan(quick=True, reps=3, startup_reps=3, ingest_seconds=2.0, e2e_events=1500,
                        huey_tasks=3000, latency_seconds=3.0, history_runs=100_000,
                        soak_seconds=0.0, time_limit=240 + 180 * postgres,
                        pg_events=1500 * postgres)
        return Plan(quick=False, reps=3, startup_reps=5, ingest_seconds=6.0, e2e_events=5000,
                    huey_tasks=10_000, latency_seconds=10.0, history_runs=1_000_000,
                    soak_seconds=90.0, time_limit=1200 + 420 * postgres,
                    pg_events=5000 * postgres)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("aiohttp", "huey", "liquid"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informational only
            versions[mod] = "?"
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "kernel": platform.release(), **versions}


def busy_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat): other processes' load when
    nothing of the bench runs."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return math.nan
    return 1 - (i1 - i0) / max(1, t1 - t0)


class Noise:
    """CPU used by processes that are not the bench's (other users of a shared machine):
    all CPUs' busy time from /proc/stat minus the bench's own process tree."""

    def __init__(self) -> None:
        self.tck = os.sysconf("SC_CLK_TCK")
        self.last = self._sample()

    def _ours(self) -> float:
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / self.tck
        mine = os.getpid()
        for pid, t in times.items():
            p, hops = parents.get(pid), 0
            while p and p != mine and hops < 50:
                p, hops = parents.get(p), hops + 1
            if p == mine:
                total += t
        return total

    def _sample(self) -> tuple[float, float, float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / self.tck
            return time.monotonic(), busy, self._ours()
        except OSError:
            return time.monotonic(), math.nan, math.nan

    def mark(self, ours: float = 0.0) -> float:
        """Other processes' CPU since the last mark, in cores (1.0 = one core fully busy);
        `ours`: CPU seconds of processes the bench started outside its process tree."""
        now = self._sample()
        wall = now[0] - self.last[0]
        foreign = (now[1] - self.last[1]) - (now[2] - self.last[2]) - ours
        self.last = now
        return max(0.0, foreign / wall) if wall > 0 else math.nan


# --- the figures -------------------------------------------------------------------------------

def e2e_once(rd: Runnerd, procs: Procs, events: int, *, conns: int = 64,
             timeout: float = 120.0,
             along: Callable[[], Callable[[], int]] | None = None) -> dict[str, Any]:
    """Post `events` to the e2e webhook (closed loop) and time them until their action runs are
    finished: action runs / (last action finished − first event accepted), from the database.
    `along` starts more load elsewhere (other nodes on the same database) at the same time and
    returns how to wait for it: the requests it had accepted."""
    since = time.time()
    assert rd.proc is not None
    cpu_before = cpu_seconds(rd.proc.pid)
    others = along() if along is not None else None
    per_conn = max(1, events // conns)
    sent = loadgen(procs, rd.port, "/webhooks/e2e", mode="closed", conns=conns, warmup=0.0,
                   duration=timeout, max_requests=per_conn)
    expected = sent["ok"] + (others() if others is not None else 0)
    sql = ("SELECT COUNT(*) FROM events e CROSS JOIN runs r ON r.event_id = e.id "
           "WHERE e.created_at >= ? AND e.topic = 'user/bench/e2e' AND r.kind = 'action' "
           "AND r.state IN ('succeeded', 'failed')")
    done = rd.wait_count(sql, (since,), expected, timeout=timeout, interval=0.05)
    if done < expected:
        raise RuntimeError(f"only {done}/{expected} action runs finished in {timeout:.0f}s")
    first, last, failed = rd.query(
        "SELECT MIN(e.created_at), MAX(r.finished_at), SUM(r.state = 'failed') "
        "FROM events e CROSS JOIN runs r ON r.event_id = e.id "
        "WHERE e.created_at >= ? AND e.topic = 'user/bench/e2e' AND r.kind = 'action'",
        (since,))[0]
    elapsed = last - first
    rd.wait_idle(30)
    cpu = cpu_seconds(rd.proc.pid) - cpu_before  # the daemon's, all its threads
    return {"events": expected, "actions": done, "failed": failed, "elapsed": elapsed,
            "actions_per_s": done / elapsed, "runs_per_s": 3 * done / elapsed, "cpu_s": cpu,
            "cpu_ms_per_pipeline": 1000 * cpu / done if done else math.nan, "loadgen": sent}


def huey_once(procs: Procs, tmp: Path, n: int, workers: int) -> dict[str, Any]:
    db = tmp / f"huey-{time.monotonic_ns()}.db"
    try:
        return procs.run_json([*pin(SERVER_CPU), PY, "-m", "bench.peers", "huey", "--db",
                               str(db), "--n", str(n), "--workers", str(workers),
                               "--timeout", "120"], timeout=240)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)


def latency_once(rd: Runnerd, procs: Procs, rate: float, seconds: float) -> dict[str, Any]:
    since = time.time()
    sent = loadgen(procs, rd.port, "/webhooks/e2e", mode="open", rate=rate, duration=seconds,
                   conns=16, warmup=0.0)
    sql = ("SELECT COUNT(*) FROM events e CROSS JOIN runs r ON r.event_id = e.id "
           "WHERE e.created_at >= ? AND e.topic = 'user/bench/e2e' AND r.kind = 'action' "
           "AND r.state IN ('succeeded', 'failed')")
    rd.wait_count(sql, (since,), sent["ok"], timeout=60, interval=0.05)
    lat = [row[0] for row in rd.query(
        "SELECT r.finished_at - e.created_at "
        "FROM events e CROSS JOIN runs r ON r.event_id = e.id WHERE e.created_at >= ? AND e.topic = 'user/bench/e2e' AND r.kind = 'action' "
        "AND r.finished_at IS NOT NULL", (since,))]
    rd.wait_idle(30)
    return {"sent": sent["sent"], "ok": sent["ok"], "measured": len(lat),
            "p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
            "max": max(lat) if lat else math.nan, "loadgen": sent}


def ingest_once(procs: Procs, port: int, seconds: float,
                path: str = "/webhooks/ingest") -> dict[str, Any]:
    """Closed-loop webhooks for `seconds`: /webhooks/ingest has no task subscribed;
    /webhooks/e2e has the ~20-line task, so the daemon renders while it takes them."""
    body = '{"hello": "world", "n": 1}' if path == "/webhooks/ingest" else E2E_BODY
    return loadgen(procs, port, path, mode="closed", conns=64, warmup=1.0,
                   duration=seconds, body=body)


def count_events(rd: Runnerd) -> int:
    """Events stored (every webhook the daemon answered 204, warm-up included)."""
    return int(rd.query("SELECT COUNT(*) FROM events")[0][0])


def finished_runs(rd: Runnerd) -> int:
    """Runs the daemon has created (all finished once it is idle); MAX(id) needs no scan."""
    return int(rd.query("SELECT COALESCE(MAX(id), 0) FROM runs")[0][0])


# --- the run -----------------------------------------------------------------------------------

def startup_row(plan: Plan, tmp: Path, procs: Procs) -> tuple[Row, list[dict[str, Any]]]:
    """(f) start-up with 100 tasks: spawn → READY=1, → port accepting, → /health 200."""
    log("f: start-up with 100 tasks")
    starts = []
    for i in range(plan.startup_reps):
        d = tmp / f"startup-{i}"
        d.mkdir()
        rd = Runnerd(procs, d, d / "runnerd.db", extra_tasks=100)
        try:
            starts.append(rd.start())
        finally:
            rd.stop()
    has_health = all(s["health_s"] is not None and not math.isnan(s["health_s"]) for s in starts)
    ready = [s["ready_s"] for s in starts if s["ready_s"] is not None]
    port_up = [s["port_s"] for s in starts if s["port_s"] is not None]
    if has_health:
        health = [s["health_s"] for s in starts]
        figure, how = health, "spawn → /health 200"
    else:
        figure, how = port_up, "spawn → port accepting (no /health endpoint yet: fallback)"
    note = (f"{how}; spawn → READY=1 over NOTIFY_SOCKET: median "
            f"{median(ready) * 1000:.0f} ms. Includes Python start-up, migrating a new database "
            f"and compiling 101 tasks.") if ready else how
    rows_f = Row("f", "start-up, 100 tasks", [v * 1000 for v in figure], "ms",
                 target="≤ 1000 ms", passed=bool(figure) and median(figure) <= 1.0, note=note)
    return rows_f, starts


def bench(plan: Plan, tmp: Path, procs: Procs, huey_workers: int) -> tuple[list[Row], dict]:
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    noise = Noise()
    raw["foreign_cores"] = foreign = {}

    rows_f, raw["startup"] = startup_row(plan, tmp, procs)
    foreign["f"] = noise.mark()

    # One long-lived daemon for b, c, e, a, soak.
    main_dir = tmp / "main"
    main_dir.mkdir()
    rd = Runnerd(procs, main_dir, main_dir / "runnerd.db")
    rd.start()
    time.sleep(1.0)
    idle = []
    for _ in range(3):
        idle.append(rd.rss_kib() / 1024)  # type: ignore[operator]
        time.sleep(0.2)
    raw["idle_rss_mib"] = idle
    log(f"e: idle RSS {median(idle):.1f} MiB")

    # Warm-up that doubles as the "after 10k runs" memory point: ~10k runs (3 per event).
    e2e_once(rd, procs, 3400)
    n_done = finished_runs(rd)
    rss_10k = rd.rss_kib() / 1024  # type: ignore[operator]
    raw["rss_after_10k"] = {"runs": n_done, "mib": rss_10k}
    log(f"e: RSS after {n_done} runs: {rss_10k:.1f} MiB")

    # (b) end to end, interleaved with huey.
    log(f"b: end to end, {plan.e2e_events} events x {plan.reps} vs huey {plan.huey_tasks} tasks")
    ours_b, huey_b, raw["e2e"], raw["huey"] = [], [], [], []
    for _ in range(plan.reps):
        r = e2e_once(rd, procs, plan.e2e_events)
        raw["e2e"].append(r)
        ours_b.append(r["actions_per_s"])
        log(f"   runnerd {r['actions_per_s']:.0f} pipelines/s ({r['runs_per_s']:.0f} runs/s)")
        h = huey_once(procs, tmp, plan.huey_tasks, huey_workers)
        raw["huey"].append(h)
        huey_b.append(h["rate"])
        log(f"   huey    {h['rate']:.0f} tasks/s")
    foreign["b"] = noise.mark()

    # (c) latency at 500 events/s, open loop.
    log(f"c: latency at 500 events/s for {plan.latency_seconds:.0f}s x {plan.reps}")
    raw["latency"] = []
    for _ in range(plan.reps):
        r = latency_once(rd, procs, 500.0, plan.latency_seconds)
        raw["latency"].append(r)
        log(f"   p50 {r['p50'] * 1000:.1f} ms  p99 {r['p99'] * 1000:.1f} ms  "
            f"({r['measured']}/{r['sent']})")

    foreign["c"] = noise.mark()

    # (a) ingest vs bare, interleaved; the bare server is pinned to the same CPU.
    log(f"a: ingest {plan.ingest_seconds:.0f}s x {plan.reps}, runnerd vs bare aiohttp")
    bare_port = free_port()
    bare = procs.start([*pin(SERVER_CPU), PY, "-m", "bench.peers", "bare", "--port",
                        str(bare_port)], stdout=-1, cwd=ROOT)
    assert bare.stdout is not None
    if bare.stdout.readline().strip() != b"READY":
        raise RuntimeError("bare aiohttp server did not start")
    ours_a, bare_a, raw["ingest"], raw["bare"], raw["ingest_rendering"] = [], [], [], [], []
    try:
        for _ in range(plan.reps):
            b = ingest_once(procs, bare_port, plan.ingest_seconds)
            raw["bare"].append(b)
            bare_a.append(b["rps"])
            cpu0, events0 = cpu_seconds(rd.pid), count_events(rd)
            r = ingest_once(procs, rd.port, plan.ingest_seconds)
            r["cpu_us_per_request"] = (1e6 * (cpu_seconds(rd.pid) - cpu0)
                                       / max(1, count_events(rd) - events0))
            raw["ingest"].append(r)
            ours_a.append(r["rps"])
            log(f"   bare {b['rps']:.0f} req/s (client CPU {b['cpu_share']:.0%})   "
                f"runnerd {r['rps']:.0f} req/s (client CPU {r['cpu_share']:.0%}, "
                f"non-2xx {r['completed'] - r['ok']})")
            rd.wait_idle(60)
            w = ingest_once(procs, rd.port, plan.ingest_seconds, path="/webhooks/e2e")
            raw["ingest_rendering"].append(w)
            log(f"   runnerd while rendering {w['rps']:.0f} req/s "
                f"(non-2xx {w['completed'] - w['ok']}, errors {w['errors']})")
            rd.wait_idle(120)
    finally:
        procs.stop(bare)
    foreign["a"] = noise.mark()

    # Soak (full run only): more end-to-end load, then RSS again.
    if plan.soak_seconds:
        log(f"e: soak {plan.soak_seconds:.0f}s of end-to-end load")
        end = time.monotonic() + plan.soak_seconds
        while time.monotonic() < end:
            e2e_once(rd, procs, 5000)
    time.sleep(1.0)
    n_end = finished_runs(rd)
    rss_end = rd.rss_kib() / 1024  # type: ignore[operator]
    raw["rss_end"] = {"runs": n_end, "mib": rss_end}
    log(f"e: RSS after {n_end} runs: {rss_end:.1f} MiB")
    rd.stop()
    foreign["e"] = noise.mark()

    # (d) history: a database with 1M (quick: 100k) finished runs.
    hist_dir = tmp / "history"
    hist_dir.mkdir()
    log(f"d: writing {plan.history_runs} finished runs of history")
    made = make_history(hist_dir / "runnerd.db", plan.history_runs)
    raw["history_made"] = made
    log(f"   {made['runs']} runs, {made['bytes'] / 2**20:.0f} MiB in {made['seconds']:.1f}s")
    hd = Runnerd(procs, hist_dir, hist_dir / "runnerd.db")
    hd.start()
    ours_d, raw["e2e_history"] = [], []
    try:
        for _ in range(plan.reps):
            r = e2e_once(hd, procs, plan.e2e_events)
            raw["e2e_history"].append(r)
            ours_d.append(r["actions_per_s"])
            log(f"   runnerd on history {r['actions_per_s']:.0f} pipelines/s")
        rss_hist = hd.rss_kib() / 1024  # type: ignore[operator]
        raw["rss_history"] = rss_hist
    finally:
        hd.stop()
    foreign["d"] = noise.mark()

    # --- the rows ---
    hist_label = f"{plan.history_runs // 1000}k" if plan.history_runs < 1_000_000 else "1M"
    a_ratio = ratio(median(ours_a), median(bare_a))
    a_errors = sum(x["errors"] for x in raw["ingest"])
    a_note_err = (f" RUNNERD FAILED {a_errors} request(s) (no answer within "
                  f"{15:.0f}s or connection lost): see raw.ingest in latest.json."
                  if a_errors else "")
    client_cpu = max([x["cpu_share"] for x in raw["bare"]] or [0])
    rows.append(Row(
        "a", "webhook ingest, 64 conns, keep-alive", ours_a, "req/s", bare_a, "bare aiohttp",
        a_ratio, "≥ 75 %", a_ratio >= 0.75 if not math.isnan(a_ratio) else None,
        note=(f"204 after the group commit (synchronous=FULL). Same raw-asyncio load generator "
              f"pinned to CPU {CLIENT_CPU}, servers to CPU {SERVER_CPU}; "
              f"{plan.ingest_seconds:.0f}s after 1s warm-up per repetition. The generator used "
              f"up to {client_cpu:.0%} of its core against the bare server"
              + (" — at saturation, so the bare figure is a floor and the ratio flattering."
                 if client_cpu > 0.9 else ".") + a_note_err)))
    rows.append(Row(
        "a", "daemon CPU a webhook (ingest)", [x["cpu_us_per_request"] for x in raw["ingest"]],
        "µs", note="user + system CPU of the daemon (all its threads) over an ingest repetition "
                   "with its warm-up, divided by the events it stored: the load-independent "
                   "figure behind the row above."))
    ours_w = [x["rps"] for x in raw["ingest_rendering"]]
    w_failed = sum(x["completed"] - x["ok"] + x["errors"] for x in raw["ingest_rendering"])
    w_ratio = ratio(median(ours_w), median(bare_a))
    rows.append(Row(
        "a", "webhook ingest while rendering (~20-line task subscribed)", ours_w, "req/s",
        bare_a, "bare aiohttp", w_ratio, "≥ 50 %, none failing",
        (w_ratio >= 0.5 and w_failed == 0) if not math.isnan(w_ratio) else None,
        note=(f"the same load on /webhooks/e2e, whose task renders every event while the "
              f"requests come in; {w_failed} request(s) failed or timed out; the daemon drains "
              f"the backlog between repetitions.")))
    b_ratio = ratio(median(ours_b), median(huey_b))
    rows.append(Row(
        "b", "end to end, empty db (pipelines/s)", ours_b, "/s", huey_b, "SqliteHuey no-op",
        b_ratio, "", None,
        note=(f"not judged: SPEC §12's target is in runs (the next row); {plan.e2e_events} webhooks → event run → task run (20-line Liquid) → cache "
              f"action; figure = finished action runs / (last action finished − first event "
              f"accepted), from the database (3 runs each: "
              f"{median([x['runs_per_s'] for x in raw['e2e']]):.0f} runs/s). "
              f"Huey: {plan.huey_tasks} no-op tasks enqueued first (not timed), then a "
              f"{huey_workers}-thread consumer timed until the last completed.")))
    # SPEC §12 compares runs/s: a pipeline is 3 runs (event, task, action), a huey task is 1.
    # Both readings are printed; the runs are judged, as SPEC names them.
    runs_b = [x["runs_per_s"] for x in raw["e2e"]]
    runs_ratio = ratio(median(runs_b), median(huey_b))
    rows.append(Row(
        "b", "end to end, empty db (runs/s)", runs_b, "/s", huey_b, "SqliteHuey no-op",
        runs_ratio, "≥ 1.5×", runs_ratio >= 1.5 if not math.isnan(runs_ratio) else None,
        note="the same repetitions counted in runs (3 per pipeline) against huey's tasks "
             "(1 run each): the unit SPEC §12 names."))
    cpu_b = [x["cpu_ms_per_pipeline"] for x in raw["e2e"]]
    rows.append(Row(
        "b", "daemon CPU a pipeline", cpu_b, "ms", target="≤ 0.8 ms",
        passed=median(cpu_b) <= 0.8 if not math.isnan(median(cpu_b)) else None,
        note="user + system CPU of the daemon process (all its threads) over the end-to-end "
             "repetitions, divided by the pipelines finished."))
    p50 = [x["p50"] * 1000 for x in raw["latency"]]
    p99 = [x["p99"] * 1000 for x in raw["latency"]]
    lat_note = (f"open loop, fixed schedule, {plan.latency_seconds:.0f}s per repetition; "
                "action run finished_at − event created_at, from the database. HTTP p99 seen by "
                f"the client: {median([x['loadgen']['http_p99'] or 0 for x in raw['latency']]) * 1000:.1f} ms.")
    rows.append(Row("c", "latency p50 @ 500 events/s", p50, "ms", target="≤ 10 ms",
                    passed=median(p50) <= 10, note=lat_note))
    rows.append(Row("c", "latency p99 @ 500 events/s", p99, "ms", target="≤ 50 ms",
                    passed=median(p99) <= 50))
    d_ratio = ratio(median(ours_d), median(ours_b))
    rows.append(Row(
        "d", f"end to end with {hist_label} finished runs", ours_d, "/s", ours_b,
        "empty db", d_ratio, "≥ 90 %", d_ratio >= 0.9 if not math.isnan(d_ratio) else None,
        note=(f"history written by direct SQL ({made['runs']} runs in {made['events']} "
              f"event trees over the last 10 days, {made['bytes'] / 2**20:.0f} MiB)"
              + ("; --quick uses 100k, not 1M." if plan.quick else "."))))
    rows.append(Row("e", "idle RSS", idle, "MiB", target="≤ 50 MiB",
                    passed=median(idle) <= 50, note="VmRSS from /proc 1s after start-up."))
    growth = ratio(rss_end, rss_10k)
    rows.append(Row(
        "e", f"RSS after {n_end // 1000}k runs vs after {n_done // 1000}k", [rss_end], "MiB",
        [rss_10k], f"after {n_done // 1000}k", growth, "≤ 1.2×",
        growth <= 1.2 if not math.isnan(growth) else None,
        note=(f"the same daemon process after performing {n_end} runs vs {n_done}. Performing "
              "1M runs does not fit the time budget; the history row below covers 1M runs in "
              "the database." + (" --quick: small numbers." if plan.quick else ""))))
    hist_growth = ratio(rss_hist, rss_10k)
    rows.append(Row(
        "e", f"RSS on {hist_label}-run db vs after {n_done // 1000}k", [rss_hist], "MiB",
        [rss_10k], f"after {n_done // 1000}k", hist_growth, "≤ 1.2×",
        hist_growth <= 1.2 if not math.isnan(hist_growth) else None,
        note="a daemon started on the history database, after its end-to-end repetitions."))
    rows.append(rows_f)
    if plan.pg_events:
        pg_rows, raw["postgres"] = bench_postgres(plan, tmp, procs, e2e_once, log)
        rows += pg_rows
        foreign["g"] = foreign["h"] = noise.mark(raw["postgres"].get("server_cpu_s", 0.0))
    seen: set[str] = set()
    for row in rows:
        share = foreign.get(row.key, 0.0)
        if share > 0.1 and row.key not in seen:
            seen.add(row.key)
            extra = (f"NOISY: other processes used {share:.2f} cores during this phase "
                     "(shared machine); the figure is unreliable.")
            row.note = f"{row.note} {extra}".strip()
    return rows, raw


def write_results(plan: Plan, rows: list[Row], raw: dict[str, Any], table: str,
                  started: float, huey_workers: int) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "mode": "quick" if plan.quick else "full",
        "plan": dataclasses.asdict(plan),
        "huey_workers": huey_workers,
        "machine": machine(),
        "rows": [r.to_json() for r in rows],
        "raw": raw,
        "table": table,
    }
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    (RESULTS / ("latest-quick.md" if plan.quick else "latest-full.md")).write_text(table + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run, smaller numbers")
    p.add_argument("--huey-workers", type=int, default=1,
                   help="huey consumer threads (1 is huey's fastest on 2 cores)")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (debugging)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--postgres", action="store_true",
                   help="add SPEC §12's PostgreSQL rows (a throwaway server of its own)")
    p.add_argument("--postgres-only", type=int, metavar="EVENTS", default=0,
                   help="only the PostgreSQL rows, one repetition of EVENTS events, results "
                        "not saved (the smoke test)")
    args = p.parse_args(argv)
    plan = Plan.make(args.quick, args.postgres)
    if args.postgres_only:
        plan = dataclasses.replace(plan, reps=1, pg_events=args.postgres_only, time_limit=240)
    started = time.time()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the bench went over its {plan.time_limit}s limit")

    # The orchestrator (polling, history writing) stays off the server's CPU.
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {CLIENT_CPU})
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(plan.time_limit)
    tmp = Path(tempfile.mkdtemp(prefix="runnerd-bench-"))
    procs = Procs()
    log(f"{'PostgreSQL rows only' if args.postgres_only else 'quick' if plan.quick else 'full'}"
        f" run; temp dir {tmp}; server CPU {SERVER_CPU}, "
        f"load generator CPU {CLIENT_CPU}")
    background = [busy_share(1.0)]
    if background[0] > 0.1:
        log(f"warning: other processes keep {background[0]:.0%} of the CPUs busy; "
            "the figures will be noisy")
    try:
        if args.postgres_only:
            rows, raw = bench_postgres(plan, tmp, procs, e2e_once, log)
            print(render_table(rows))
            return 0
        rows, raw = bench(plan, tmp, procs, args.huey_workers)
    except (KeyboardInterrupt, TimeoutError) as exc:
        log(f"stopped: {exc or 'interrupted'}")
        return 130 if isinstance(exc, KeyboardInterrupt) else 2
    finally:
        signal.alarm(0)
        procs.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    background.append(busy_share(1.0))
    raw["background_busy"] = background
    m = machine()
    quiet = max(background) <= 0.1
    title = (f"runnerd bench ({'--quick' if plan.quick else 'full'} run, "
             f"{time.strftime('%Y-%m-%d', time.gmtime(started))}): {m['nproc']} × {m['cpu']}, "
             f"Python {m['python']}, SQLite {m['sqlite']}; {plan.reps} repetitions, "
             "median (min–max)"
             + ("" if quiet else
                f".\nWARNING: other processes kept {max(background):.0%} of the CPUs busy "
                "before/after the bench: figures are unreliable, run again on a quiet machine"))
    table = title + "\n\n" + render_table(rows)
    path = write_results(plan, rows, raw, table, started, args.huey_workers)
    print(table)
    log(f"results in {path.relative_to(ROOT)} ({time.time() - started:.0f}s)")
    failed = [r for r in rows if r.passed is False]
    if failed:
        log(f"{len(failed)} figure(s) miss their target")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
