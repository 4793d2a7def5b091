"""Profile runnerd's hot path: py-spy on the running daemon under load, summarised.

    .venv/bin/python -m bench.profile [--scenario e2e|ingest|latency] [--seconds 10]

Starts runnerd (pinned to CPU 0) on a temp database, drives it with the bench's load generator
(CPU 1), samples it with `py-spy record --nonblocking` (all threads: the event loop and the
database threads of store/db.py), and prints a summary: samples per thread, the functions with
the most self time, and the inclusive share of the parts of the pipeline. The raw collapsed
stacks go to bench-results/profile-<scenario>.txt (feed them to flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.procs import ROOT, Procs, Runnerd, loadgen

_LINE = re.compile(r" \(([^()]*?)(?::\d+)?\)$")

#: Parts of the pipeline: a label and a function-name pattern matched against each frame.
PARTS = [
    ("HTTP server (aiohttp request handling, total)", r"RequestHandler\._handle_request"),
    ("  webhook handler (runnerd/web/webhooks.py _webhook)",
     r"^_webhook \(runnerd/web/webhooks\.py"),
    ("  ingest.submit (waiting excluded)", r"^Ingest\.submit "),
    ("aiohttp protocol parsing (data_received)", r"data_received"),
    ("worker._turn (claim/finish round trip)", r"^Worker\._turn "),
    ("worker._perform (handlers)", r"^Worker\._perform "),
    ("  event_run", r"^Handlers\.event_run "),
    ("  task_run", r"^Handlers\.task_run "),
    ("    Liquid render", r"^Renderer\.render "),
    ("    variables / event.to_liquid", r"^Handlers\.variables "),
    ("  action_run", r"^Handlers\.action_run "),
    ("runs.finish_and_claim (on the db thread)", r"^finish_and_claim "),
    ("  runs.finish", r"^finish \(runnerd/queue/runs\.py"),
    ("  runs.claim", r"^claim \(runnerd/queue/runs\.py"),
    ("    event_chain / event_by_id lookups", r"^Tx\.(all|one) "),
    ("runs.insert_events (on the db thread)", r"^insert_events "),
    ("db COMMIT (fsync) / _transaction", r"^_transaction "),
    ("JSON (models.dumps / json.loads)", r"^(dumps|loads) \((runnerd/models|json/)"),
    ("asyncio.create_task / Task step", r"^Task\.__step|^Task\.__init__|create_task"),
    ("scheduler tick / janitor", r"^Scheduler\.(tick|janitor) "),
]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: the loop of a database thread (store/db.py `DatabaseThread._serve`) in a py-spy stack
_DB_THREAD = re.compile(r"\b_serve \([^)]*store/db\.py")


def func_name(frame: str) -> str:
    """'f (a/b.py:12)' -> 'f (a/b.py)'."""
    return _LINE.sub(lambda m: f" ({m.group(1)})", frame)


def summarise(raw: str, top: int = 25) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        stacks.append((stack.split(";"), n))
    total = sum(n for _, n in stacks) or 1
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    compiled = [(label, re.compile(pat)) for label, pat in PARTS]
    for frames, n in stacks:
        joined = ";".join(frames)
        thread = ("database thread" if _DB_THREAD.search(joined)
                  else "event loop (main thread)" if "run_forever" in joined or
                  "_handle_request" in joined or "Handle._run" in joined else "other")
        threads[thread] += n
        self_time[func_name(frames[-1])] += n
        for label, pat in compiled:
            if any(pat.search(f) for f in frames):
                parts[label] += n
    out = [f"samples: {total}", "", "| thread | samples | share |", "|---|---|---|"]
    out += [f"| {t} | {n} | {n / total:.0%} |" for t, n in threads.most_common()]
    out += ["", "| part of the pipeline (inclusive) | samples | share |", "|---|---|---|"]
    out += [f"| {label} | {parts[label]} | {parts[label] / total:.1%} |" for label, _ in PARTS]
    out += ["", f"| top {top} functions by self time | samples | share |", "|---|---|---|"]
    out += [f"| `{f}` | {n} | {n / total:.1%} |" for f, n in self_time.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--scenario", choices=("e2e", "ingest", "latency"), default="e2e")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--concurrency", type=int, default=8, help="runnerd's concurrency setting")
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (Python CPU time)")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    raw_path = out_dir / f"profile-{args.scenario}.txt"
    tmp = Path(tempfile.mkdtemp(prefix="runnerd-profile-"))
    procs = Procs()
    try:
        rd = Runnerd(procs, tmp, tmp / "runnerd.db", concurrency=args.concurrency)
        rd.start()
        time.sleep(0.5)
        spy_proc = procs.start([spy, "record", "-p", str(rd.pid), "-d", str(int(args.seconds)),
                                "-r", str(args.rate), "-f", "raw", "-o", str(raw_path),
                                "--nonblocking", *(["--gil"] if args.gil else [])], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        cpu0, wall0 = cpu_seconds(rd.pid), time.perf_counter()
        if args.scenario == "e2e":
            load = loadgen(procs, rd.port, "/webhooks/e2e", mode="closed", conns=64, warmup=0,
                           duration=args.seconds)
        elif args.scenario == "latency":
            load = loadgen(procs, rd.port, "/webhooks/e2e", mode="open", rate=500, conns=16,
                           warmup=0, duration=args.seconds)
        else:
            load = loadgen(procs, rd.port, "/webhooks/ingest", mode="closed", conns=64,
                           warmup=0, duration=args.seconds, body='{"hello": "world"}')
        cpu_share = (cpu_seconds(rd.pid) - cpu0) / (time.perf_counter() - wall0)
        spy_proc.wait(timeout=args.seconds + 30)
        rd.stop()
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"## profile: {args.scenario}, {args.seconds:.0f}s, load: "
          f"{load.get('rps') or load.get('ok')} ({load['mode']} loop); concurrency "
          f"{args.concurrency}; daemon CPU {cpu_share:.0%} of one core"
          f"{'; --gil' if args.gil else ''}\n")
    print(summarise(raw_path.read_text()))
    print(f"\nraw stacks: {raw_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
