"""The monitoring commands of the CLI: `monitor tasks`, `monitors [pause|resume NAME]`, `workers`.

`cli.py` registers them (`add_parsers`, `COMMANDS`); they read and write the database directly,
so they work while the daemon runs (it sees a pause or a resume at its next tick).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from runnerd import config, errors
from runnerd.cli import shared
from runnerd.monitoring import heartbeat, monitors
from runnerd.queue import taskstatus
from runnerd.store import db

Add = Callable[..., argparse.ArgumentParser]


def add_parsers(add: Add, jsonable: argparse.ArgumentParser) -> None:
    """Add the commands to the CLI's sub-parsers (`add` is cli's helper)."""
    s = add("monitor", "one-shot checks for cron: monitor tasks --task NAME MINUTES [...]",
            jsonable)
    s.add_argument("what", choices=["tasks"])
    s.add_argument("--task", nargs=2, action="append", metavar=("NAME", "MINUTES"),
                   required=True, help="a task (or ping monitor) that must have succeeded "
                                       "within MINUTES; repeat for more")
    s.add_argument("--no-mail", action="store_true",
                   help="do not email monitoring.mail_recipients")
    s = add("monitors", "list the monitors, or: monitors pause|resume NAME", jsonable)
    s.add_argument("action", nargs="?", choices=["pause", "resume"])
    s.add_argument("name", nargs="?")
    add("workers", "the daemon processes' heartbeats, with ages", jsonable)


def _checks(pairs: list[list[str]]) -> list[tuple[str, float]]:
    out = []
    for name, minutes in pairs:
        try:
            value = float(minutes)
        except ValueError:
            raise errors.InvalidInput(
                f"--task {name} {minutes}: MINUTES must be a number") from None
        if value <= 0:
            raise errors.InvalidInput(f"--task {name} {minutes}: MINUTES must be positive")
        out.append((name, value))
    return out


def cmd_monitor(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    """`runnerd monitor tasks`: exit 1 when any task is not ok."""
    settings = config.load(path, environ)
    checks = _checks(args.task)
    results, mailed = shared.with_db(settings, lambda d: monitors.monitor_tasks(
        d, settings, checks, mail=not args.no_mail, now=time.time()))
    if args.json:
        shared.print_json(results)
    else:
        minutes = dict(checks)
        for result in results:
            print(monitors.describe(result, minutes[result["name"]]))
    if mailed:
        print(f"runnerd: {mailed}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in results) else shared.EXIT_FAIL


def cmd_monitors(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    """`runnerd monitors [pause|resume NAME]`."""
    settings = config.load(path, environ)
    now = time.time()
    if args.action is not None:
        if args.name is None:
            raise errors.InvalidInput(f"monitors {args.action} needs a monitor name")
        if args.name not in monitors.specs(settings):
            raise errors.NotFound(f"no monitor named {args.name!r} in {path}")
        move = taskstatus.pause if args.action == "pause" else taskstatus.resume
        spec = monitors.specs(settings)[args.name]

        def act(tx: db.Tx) -> dict[str, Any]:
            # The row exists even before the daemon's first tick (the daemon re-syncs anyway).
            tx.execute("status_set_monitor", {"name": args.name, "monitor": spec.to_json(),
                                              "now": now})
            return move(tx, args.name, now)

        row = shared.with_db(settings, lambda d: d.write(act))
        shared.print_json(row) if args.json else print(
            f"monitor {row['name']} is now {row['state']}")
        return 0
    if args.name is not None:
        raise errors.InvalidInput(f"unexpected argument {args.name!r}")
    found = shared.with_db(settings, lambda d: d.read(lambda tx: {
        r["name"]: r for r in taskstatus.rows(tx)}))
    out = []
    for monitor in settings.monitors:
        row = found.get(monitor.name) or {"state": "new", "last_status": None,
                                          "last_success_at": None, "last_run_at": None}
        out.append({"name": monitor.name, "kind": "task" if monitor.task else "ping",
                    "period": monitor.period, "schedule": monitor.schedule,
                    "grace": monitor.grace, **{k: v for k, v in row.items()
                                               if k not in ("name", "monitor")}})
    if args.json:
        shared.print_json(out)
        return 0
    if not out:
        print("no monitors configured")
        return 0
    print(f"{'MONITOR':<28} {'KIND':<5} {'STATE':<7} {'EXPECTS':<24} {'LAST SUCCESS':<25} "
          "LAST STATUS")
    for m in out:
        expects = (f"every {m['period']:g}s" if m["period"] else f"cron {m['schedule']}")
        expects += f" +{m['grace']:g}s"
        print(f"{m['name'][:28]:<28} {m['kind']:<5} {m['state']:<7} {expects[:24]:<24} "
              f"{m['last_success_at'] or 'never':<25} {m['last_status'] or '-'}")
    return 0


def cmd_workers(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    """`runnerd workers`: one line per daemon process seen, newest first."""
    settings = config.load(path, environ)
    now = time.time()
    rows = shared.with_db(settings, lambda d: d.read(lambda tx: heartbeat.rows(tx, now)))
    if args.json:
        shared.print_json(rows)
        return 0
    if not rows:
        print("no workers have run on this database")
        return 0
    print(f"{'WORKER':<36} {'HEALTHY':<8} {'ACTIVE':>6} {'BEAT AGE':>9} {'UPTIME':>9}  PROBLEM")
    for r in rows:
        state = "stopped" if r["stopped_at"] else ("yes" if r["healthy"] else "NO")
        print(f"{r['id'][:36]:<36} {state:<8} {r['active_runs']:>6} "
              f"{r['heartbeat_age_seconds']:>8.1f}s {r['uptime_seconds']:>8.0f}s  "
              f"{r['problem'] or ''}")
    return 0
