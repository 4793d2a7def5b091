"""`scripts/bench --postgres`: SPEC §12's PostgreSQL rows, beside the SQLite rows of the same run.

A throwaway PostgreSQL server (tests/helpers_postgres.py, fsync on: what users run) on a Unix
socket; runnerd nodes on it, pinned like the SQLite daemon. Figures:

  g  one node on PostgreSQL vs one on SQLite, end to end, interleaved (pipelines/s, ratio)
  g  runnerd's CPU per pipeline and the PostgreSQL server's (the postmaster and its children
     from /proc, minus the bench's own polling connection), measured separately
  g  idle RSS of a node on PostgreSQL
  h  one vs two nodes on one database (node_name a and b; the load generator spreads the
     webhooks over both ports), and a projection from the measured CPU per pipeline

On 2 cores the load generator, the nodes and PostgreSQL share the cores: the two-node figure
cannot show scaling there, so the CPU per pipeline and the projection are what it reports.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import Row, median, ratio
from bench.procs import ROOT, Procs, Runnerd, cpu_seconds, loadgen

#: The e2e figure of `bench.__main__` (passed in: that module is the entry point).
E2E = Callable[..., dict[str, Any]]


def _dialect(sql: str) -> str:
    """The bench's SQLite queries in PostgreSQL's dialect (parameters, a boolean sum, and
    SQLite's join-order hint)."""
    return (sql.replace("?", "%s").replace("CROSS JOIN", "JOIN")
            .replace("SUM(r.state = 'failed')", "SUM((r.state = 'failed')::int)"))


class PgRunnerd(Runnerd):
    """A node on a PostgreSQL URL; the bench's queries go through one connection of its own
    (whose server process is left out of the server's CPU)."""

    def __init__(self, procs: Procs, tmp: Path, url: str, name: str) -> None:
        super().__init__(procs, tmp, tmp / "unused.db", url=url, extra=[f"node_name: {name}"])
        import psycopg  # noqa: PLC0415 - only --postgres needs it

        self.conn = psycopg.connect(url, autocommit=True, application_name="bench poller")
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        self.backend = int(row[0]) if row else 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_dialect(sql), tuple(params)).fetchall()

    def close(self) -> None:
        self.stop()
        self.conn.close()


def server_cpu(postmaster: int, exclude: set[int]) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster and its live children (backends,
    WAL writer, checkpointer…), without the `exclude`d backends."""
    total = cpu_seconds(postmaster)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def server_total_cpu(postmaster: int) -> float:
    """CPU seconds the server has used since it started, its exited backends included (the
    postmaster reaps them): the bench's noise check counts them as the bench's own."""
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return server_cpu(postmaster, set()) + reaped


def spread_e2e(nodes: Sequence[Runnerd], procs: Procs, events: int, e2e: E2E) -> dict[str, Any]:
    """The e2e figure with the webhooks spread over `nodes` (one load generator each, at the
    same time; `e2e` times them from the database and measures the first node's CPU)."""
    if len(nodes) == 1:
        return e2e(nodes[0], procs, events)
    cpu_before = [cpu_seconds(n.pid) for n in nodes[1:]]
    results: list[dict[str, Any]] = []

    def along() -> Callable[[], int]:
        def others() -> None:
            for node in nodes[1:]:
                results.append(loadgen(procs, node.port, "/webhooks/e2e", mode="closed",
                                       conns=32, warmup=0.0, duration=120.0,
                                       max_requests=max(1, events // len(nodes) // 32)))

        thread = threading.Thread(target=others)
        thread.start()

        def accepted() -> int:
            thread.join()
            return sum(r["ok"] for r in results)
        return accepted

    first = e2e(nodes[0], procs, events // len(nodes), conns=32, along=along)
    cpu = [first["cpu_s"], *(cpu_seconds(n.pid) - b for n, b in zip(nodes[1:], cpu_before,
                                                                       strict=True))]
    return {**first, "cpu_ms_per_pipeline": 1000 * sum(cpu) / first["actions"],
            "cpu_ms_per_pipeline_per_node": [1000 * c / first["actions"] for c in cpu]}


def measured(nodes: Sequence[Runnerd], procs: Procs, events: int, e2e: E2E,
             postmaster: int, poller: set[int]) -> dict[str, Any]:
    """`spread_e2e` plus the PostgreSQL server's CPU per pipeline over the same time."""
    before = server_cpu(postmaster, poller)
    r = spread_e2e(nodes, procs, events, e2e)
    r["server_cpu_ms_per_pipeline"] = 1000 * (server_cpu(postmaster, poller) - before) / r[
        "actions"]
    return r


def _node(procs: Procs, tmp: Path, url: str, name: str) -> PgRunnerd:
    d = tmp / f"pg-node-{name}"
    d.mkdir(exist_ok=True)
    return PgRunnerd(procs, d, url, name)


def two_nodes(plan: Any, tmp: Path, procs: Procs, server: Any, e2e: E2E,
              log: Callable[[str], None]) -> tuple[list[dict[str, Any]], str | None]:
    """Two nodes (a, b) on one fresh database: their e2e repetitions, or why none (the second
    node did not start: one node per database until SPEC §14's nodes land)."""
    url = server.new_database()
    a, b = _node(procs, tmp, url, "a"), _node(procs, tmp, url, "b")
    out: list[dict[str, Any]] = []
    try:
        a.start()
        try:
            b.start()
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()  # "runnerd exited N:", then its log's tail
            return [], " ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines)
        poller = {a.backend, b.backend}
        for _ in range(plan.reps):
            r = measured([a, b], procs, plan.pg_events, e2e, server.postmaster, poller)
            out.append(r)
            log(f"   two nodes {r['actions_per_s']:.0f} pipelines/s")
    finally:
        a.close()
        b.close()
    return out, None


def bench_postgres(plan: Any, tmp: Path, procs: Procs, e2e: E2E,
                   log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """The PostgreSQL rows (g, h) and their raw figures."""
    import sys

    sys.path.insert(0, str(ROOT))
    from tests import helpers_postgres  # noqa: PLC0415 - the same throwaway server as the tests

    raw: dict[str, Any] = {}
    with helpers_postgres.server(fsync=True) as server:
        if isinstance(server, str):
            log(f"g/h: no PostgreSQL rows: {server}")
            return [Row("g", "PostgreSQL rows", [], note=f"not measured: {server}")], raw
        assert server.postmaster is not None
        started = server_total_cpu(server.postmaster)
        raw["postgres_version"] = subprocess.run(
            [str(server.bin / "postgres"), "--version"], capture_output=True, text=True,
            check=False).stdout.strip()
        one = _node(procs, tmp, server.new_database(), "a")
        lite_dir = tmp / "pg-sqlite"
        lite_dir.mkdir()
        lite = Runnerd(procs, lite_dir, lite_dir / "runnerd.db")
        try:
            one.start()
            lite.start()
            time.sleep(1.0)
            raw["pg_idle_rss_mib"] = []
            for _ in range(3):
                raw["pg_idle_rss_mib"].append(one.rss_kib() / 1024)  # type: ignore[operator]
                time.sleep(0.2)
            log(f"g: PostgreSQL node idle RSS {median(raw['pg_idle_rss_mib']):.1f} MiB")
            e2e(one, procs, plan.pg_events // 3)  # warm-up, both
            e2e(lite, procs, plan.pg_events // 3)
            raw["pg_e2e"], raw["pg_sqlite_e2e"] = [], []
            log(f"g: end to end, {plan.pg_events} events x {plan.reps}, PostgreSQL vs SQLite")
            for _ in range(plan.reps):
                r = measured([one], procs, plan.pg_events, e2e, server.postmaster, {one.backend})
                raw["pg_e2e"].append(r)
                s = e2e(lite, procs, plan.pg_events)
                raw["pg_sqlite_e2e"].append(s)
                log(f"   PostgreSQL {r['actions_per_s']:.0f} pipelines/s (runnerd "
                    f"{r['cpu_ms_per_pipeline']:.2f} ms, server "
                    f"{r['server_cpu_ms_per_pipeline']:.2f} ms CPU a pipeline); SQLite "
                    f"{s['actions_per_s']:.0f}")
        finally:
            one.close()
            lite.stop()
        log("h: two nodes on one database")
        raw["pg_two_nodes"], why = two_nodes(plan, tmp, procs, server, e2e, log)
        # The server is not the bench's child (pg_ctl starts it in the background): its CPU is
        # the bench's own all the same, not another user's (`Noise.mark`).
        raw["server_cpu_s"] = server_total_cpu(server.postmaster) - started
    return rows(raw, why), raw


def rows(raw: dict[str, Any], two_nodes_missing: str | None) -> list[Row]:
    """The g and h rows from the raw figures."""
    pg = [r["actions_per_s"] for r in raw["pg_e2e"]]
    lite = [r["actions_per_s"] for r in raw["pg_sqlite_e2e"]]
    g_ratio = ratio(median(pg), median(lite))
    ours_cpu = [r["cpu_ms_per_pipeline"] for r in raw["pg_e2e"]]
    server = [r["server_cpu_ms_per_pipeline"] for r in raw["pg_e2e"]]
    lite_cpu = [r["cpu_ms_per_pipeline"] for r in raw["pg_sqlite_e2e"]]
    out = [
        Row("g", "PostgreSQL: end to end, one node (pipelines/s)", pg, "/s", lite,
            "SQLite", g_ratio, "≥ 50 %", g_ratio >= 0.5 if not math.isnan(g_ratio) else None,
            note=(f"the b pipeline on a node whose database is a PostgreSQL server "
                  f"({raw.get('postgres_version', '?')}, same machine, Unix socket, fsync on, "
                  "unpinned) vs a SQLite daemon, interleaved repetitions on one fresh database "
                  "each.")),
        Row("g", "PostgreSQL: runnerd CPU a pipeline", ours_cpu, "ms", lite_cpu,
            "on SQLite", ratio(median(ours_cpu), median(lite_cpu)),
            note="user + system CPU of the node process over the repetitions above."),
        Row("g", "PostgreSQL: server CPU a pipeline", server, "ms",
            note=("the postmaster and its children (the node's backends, WAL writer, "
                  "checkpointer…) from /proc, without the bench's polling connection.")),
        Row("g", "PostgreSQL: idle RSS", raw["pg_idle_rss_mib"], "MiB", target="≤ 60 MiB",
            passed=median(raw["pg_idle_rss_mib"]) <= 60,
            note="VmRSS of a node on PostgreSQL 1s after start-up."),
    ]
    node_ms, server_ms = median(ours_cpu), median(server)
    shared = (f"{os.cpu_count()} cores: the load generator, the nodes and PostgreSQL share "
              "them, so this machine cannot show scaling (not judged). ")
    projection = (f"Projection from the CPU per pipeline: one node core ≈ "
                  f"{1000 / node_ms:.0f} pipelines/s; PostgreSQL needs {server_ms:.2f} ms a "
                  f"pipeline ({server_ms / (node_ms + server_ms):.0%} of the total), so one "
                  f"server core keeps up with ≈ {node_ms / server_ms:.1f} node cores."
                  if node_ms > 0 and server_ms > 0 else "")
    if two_nodes_missing is not None:
        out.append(Row("h", "PostgreSQL: two nodes on one database", [], "/s",
                       target="≥ 1.6× one node where the cores allow",
                       note=(f"two nodes: not available ({two_nodes_missing}). "
                             + shared + projection)))
        return out
    two = [r["actions_per_s"] for r in raw["pg_two_nodes"]]
    h_ratio = ratio(median(two), median(pg))
    per_node = [sum(r["cpu_ms_per_pipeline_per_node"]) for r in raw["pg_two_nodes"]]
    out.append(Row(
        "h", "PostgreSQL: two nodes on one database (pipelines/s)", two, "/s", pg, "one node",
        h_ratio, "≥ 1.6× where the cores allow",
        note=(shared + f"Node CPU a pipeline, both nodes: {median(per_node):.2f} ms vs one node {node_ms:.2f} ms; server "
              f"{median([r['server_cpu_ms_per_pipeline'] for r in raw['pg_two_nodes']]):.2f}"
              f" ms. " + projection)))
    return out
