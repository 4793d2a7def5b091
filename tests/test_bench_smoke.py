"""The bench's pure helpers (statistics, formatting, the table), and a tiny run of its
PostgreSQL rows (`--postgres-only`). No figure is judged: speed is measured by scripts/bench,
never by a test."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench import loadgen, profile

from . import helpers_postgres
from .conftest import require

ROOT = Path(__file__).resolve().parent.parent


def test_percentile_interpolates() -> None:
    assert bench.percentile([1, 2, 3, 4], 50) == 2.5
    assert bench.percentile([5], 99) == 5
    assert bench.percentile(list(range(101)), 99) == 99
    assert bench.percentile([3, 1, 2], 0) == 1
    assert bench.percentile([3, 1, 2], 100) == 3
    assert math.isnan(bench.percentile([], 50))
    with pytest.raises(ValueError):
        bench.percentile([1], 101)


def test_median_spread_ratio() -> None:
    assert bench.median([3, 1, 2]) == 2
    assert bench.spread([3, 1, 2]) == (1, 3)
    assert bench.ratio(3, 2) == 1.5
    assert math.isnan(bench.ratio(1, 0))
    assert math.isnan(bench.ratio(math.nan, 1))


def test_formatting() -> None:
    assert bench.fmt_num(12345) == "12.3k"
    assert bench.fmt_num(2_500_000) == "2.50M"
    assert bench.fmt_num(3.14159, "ms") == "3.14 ms"
    assert bench.fmt_num(math.nan) == "n/a"
    assert bench.fmt_ratio(0.912) == "91 %"
    assert bench.fmt_ratio(3.4) == "3.40×"
    assert bench.fmt_ratio(math.nan) == "n/a"
    assert bench.fmt_stat([1, 2, 3], "ms") == "2.00 ms (1.00–3.00)"
    assert bench.fmt_stat([]) == "n/a"


def test_table_renders_rows_and_notes() -> None:
    rows = [
        bench.Row("a", "ingest", [900, 1000, 1100], "req/s", [1000, 1100, 1200], "bare",
                  bench.ratio(1000, 1100), "≥ 85 %", True, note="a note"),
        bench.Row("c", "latency p50", [4.0, 5.0, 6.0], "ms", target="≤ 10 ms", passed=False),
        bench.Row("f", "start-up", [], "ms", target="≤ 1000 ms"),
    ]
    md = bench.render_table(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| # | what |")
    assert "| a | ingest [1] | 1000 req/s (900–1100) | bare: 1100 req/s (1000–1200) | 91 % " \
           "| ≥ 85 % | PASS |" in md
    assert "| FAIL |" in md and "| — |" in md
    assert lines[-1] == "[1] a note"
    plain = bench.render_table(rows, markdown=False)
    assert "PASS" in plain and "|" not in plain.splitlines()[0]
    js = rows[0].to_json()
    assert js["ours"]["median"] == 1000 and js["passed"] is True
    assert rows[2].to_json()["ours"]["median"] is None


def test_loadgen_request_and_profile_helpers() -> None:
    req = loadgen.build_request("127.0.0.1", 8080, "/webhooks/x", b'{"a": 1}')
    assert req.startswith(b"POST /webhooks/x HTTP/1.1\r\n")
    assert req.endswith(b"Content-Length: 8\r\n\r\n{\"a\": 1}")
    assert profile.func_name("f (a/b.py:12)") == "f (a/b.py)"
    summary = profile.summarise("main (x.py:1);Handle._run (asyncio/events.py:80);"
                                "Renderer.render (runnerd/render.py:570) 3\n")
    assert "samples: 3" in summary and "| event loop (main thread) | 3 | 100% |" in summary


@pytest.mark.timeout(300)
def test_the_postgres_rows_run_end_to_end() -> None:
    """`python -m bench --postgres-only N`: its own throwaway server, a node on it beside a
    SQLite daemon, the second node (or why there is none); every figure measured, none faked."""
    require(helpers_postgres.bindir() is not None, "PostgreSQL is not installed")
    done = subprocess.run([sys.executable, "-m", "bench", "--postgres-only", "96"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for what in ("end to end, one node (pipelines/s)", "runnerd CPU a pipeline",
                 "server CPU a pipeline", "idle RSS"):
        line = next(ln for ln in table.splitlines() if what in ln)
        assert re.search(r"\| [\d.]+k? (/s|ms|MiB)", line), line  # a number, not n/a
    two = next(ln for ln in table.splitlines() if "two nodes on one database" in ln)
    if "pipelines/s" in two:  # several nodes per database: measured
        assert re.search(r"\| [\d.]+k? /s", two), two
    else:  # one node per database: said so, with the second node's own words
        assert re.search(r"two nodes: not available \(runnerd exited 1: .*already running",
                         table), table
    assert "Projection from the CPU per pipeline: one node core ≈" in table


def test_the_postgres_rows_with_two_nodes_measured() -> None:
    """The h row once several nodes share a database: both nodes' CPU, the ratio to one node,
    not judged on 2 cores, and the projection from the measured CPU per pipeline."""
    from bench import postgres

    one = {"actions_per_s": 100.0, "cpu_ms_per_pipeline": 2.0, "server_cpu_ms_per_pipeline": 1.0}
    lite = {"actions_per_s": 400.0, "cpu_ms_per_pipeline": 0.5}
    two = {"actions_per_s": 150.0, "cpu_ms_per_pipeline_per_node": [1.1, 1.0],
           "server_cpu_ms_per_pipeline": 1.2}
    rows = postgres.rows({"pg_e2e": [one], "pg_sqlite_e2e": [lite], "pg_two_nodes": [two],
                          "pg_idle_rss_mib": [58.0]}, None)
    assert [r.key for r in rows] == ["g", "g", "g", "g", "h"]
    assert rows[0].ratio == 0.25 and rows[0].passed is False
    h = rows[-1]
    assert h.ratio == 1.5 and h.passed is None
    assert "both nodes: 2.10 ms vs one node 2.00 ms; server 1.20 ms" in h.note
    assert "one node core ≈ 500 pipelines/s" in h.note
    assert "one server core keeps up with ≈ 2.0 node cores" in h.note
    missing = postgres.rows({"pg_e2e": [one], "pg_sqlite_e2e": [lite],
                             "pg_idle_rss_mib": [58.0]}, "runnerd exited 1: taken")
    assert missing[-1].ours == [] and missing[-1].note.startswith(
        "two nodes: not available (runnerd exited 1: taken).")
