"""What-if measurements: runnerd with one change patched in at start-up.

    .venv/bin/python -m bench.experiments [--only NAME ...] [--events 3000] [--reps 3]

Each variant starts `python -m bench.experiments --launch PATCHES run -c CONFIG`, which applies
the named monkeypatches to the runnerd modules in memory and then runs the normal CLI. Nothing
under runnerd/ is changed; the patches only approximate the suggested code changes, to size the
gain before someone makes them for real.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# --- the patches (applied in the daemon process) -----------------------------------------------


def patch_taskid() -> None:
    """Task.id: uuid5 once per name instead of on every access (every task and action run)."""
    import uuid

    from runnerd import config

    @functools.lru_cache(maxsize=4096)
    def task_id(name: str) -> str:
        return str(uuid.uuid5(config.TASK_NAMESPACE, name))

    config.Task.id = property(lambda self: task_id(self.name))  # type: ignore[method-assign,assignment]


def patch_cache64() -> None:
    """PRAGMA cache_size = -65536 (64 MiB page cache per connection instead of 2 MiB)."""
    from runnerd.store import db

    orig = db._pragmas

    def pragmas(conn: Any, *, readonly: bool = False) -> None:
        orig(conn, readonly=readonly)
        conn.execute("PRAGMA cache_size = -65536")

    db._pragmas = pragmas  # type: ignore[assignment]


def patch_noworker() -> None:
    """No worker: the ingest ceiling with nothing else competing for the core (not a fix)."""
    from runnerd.engine import worker

    async def run(self: Any, stop: Any, *, grace: float = 20.0) -> None:
        await stop.wait()

    worker.Worker.run = run  # type: ignore[method-assign]


PATCHES = {"taskid": patch_taskid, "cache64": patch_cache64, "noworker": patch_noworker}


def launch(names: str, argv: list[str]) -> int:
    for name in filter(None, names.split(",")):
        PATCHES[name]()
    from runnerd import cli

    return int(cli.main(argv) or 0)


# --- the driver --------------------------------------------------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"patches": "", "concurrency": 8},
    "concurrency32": {"patches": "", "concurrency": 32},
    "taskid": {"patches": "taskid", "concurrency": 8},
    "history-baseline": {"patches": "", "concurrency": 8, "history": True},
    "history-cache64": {"patches": "cache64", "concurrency": 8, "history": True},
    "ingest-baseline": {"patches": "", "concurrency": 8, "ingest": True},
    "ingest-noworker": {"patches": "noworker", "concurrency": 8, "ingest": True},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--launch"]:
        return launch(argv[1], argv[2:])
    from bench import median
    from bench.__main__ import e2e_once, ingest_once
    from bench.procs import Procs, Runnerd, make_history

    p = argparse.ArgumentParser(prog="python -m bench.experiments")
    p.add_argument("--only", nargs="*", default=list(VARIANTS))
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--history-runs", type=int, default=300_000)
    args = p.parse_args(argv)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="runnerd-exp-"))
    hist_template: Path | None = None
    try:
        for name in args.only:
            v = VARIANTS[name]
            d = tmp / name
            d.mkdir()
            db = d / "runnerd.db"
            if v.get("history"):
                if hist_template is None:
                    hist_template = tmp / "history.db"
                    make_history(hist_template, args.history_runs)
                db.write_bytes(hist_template.read_bytes())
            rd = Runnerd(procs, d, db, concurrency=v["concurrency"],
                         launcher=["-m", "bench.experiments", "--launch", v["patches"]])
            rd.start()
            time.sleep(0.5)
            figures = []
            for _ in range(args.reps):
                if v.get("ingest"):
                    figures.append(ingest_once(procs, rd.port, 4.0)["rps"])
                    rd.wait_idle(60)
                else:
                    figures.append(e2e_once(rd, procs, args.events)["actions_per_s"])
            rd.stop()
            print(f"{name:18s} median {median(figures):7.0f}/s  "
                  f"({', '.join(f'{x:.0f}' for x in figures)})", flush=True)
    finally:
        procs.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
