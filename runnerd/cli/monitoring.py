"""The monitoring commands of the CLI: `monitor tasks`, `monitors [pause|resume|show NAME]`,
`workers`.

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
from runnerd.config import cron
from runnerd.monitoring import heartbeat, monitors, pings
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
    s = add("monitors", "list the monitors, or: monitors pause|resume|show NAME", jsonable)
    s.add_argument("action", nargs="?", choices=["pause", "resume", "show"])
    s.add_argument("name", nargs="?")
    add("workers", "the daemon processes (nodes) with their heartbeats and ages, alive or not",
        jsonable)


def _checks(pairs: list[list[str]]) -> list[tuple[str, float]]:
    out = []
    for name, minutes in pairs:
        try:
            value = float(minutes)
        except ValueError:
            raise shared.Usage(f"--task {name} {minutes}: MINUTES must be a number") from None
        if value <= 0:
            raise shared.Usage(f"--task {name} {minutes}: MINUTES must be positive")
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


def _expects(m: dict[str, Any]) -> str:
    expects = (f"every {m['period']:g}s" if m["period"] else f"cron {m['schedule']}")
    return expects + f" +{m['grace']:g}s"


def _show(args: argparse.Namespace, settings: config.Settings,
          listed: dict[str, Any]) -> int:
    """`runnerd monitors show NAME`: the monitor, its recent pings and flips, newest first."""
    found = shared.with_db(settings, lambda d: d.read(lambda tx: pings.history(
        tx, args.name, settings.monitoring.ping_history)))
    shown = {**listed, **found}
    if args.json:
        shared.print_json(shown)
        return 0
    duration = shown.get("last_duration")
    words = f" ({shown['schedule_in_words']})" if shown["schedule_in_words"] else ""
    print(f"monitor {shown['name']} ({shown['kind']}): {shown['state']}; expects "
          f"{_expects(shown)}{words}\nlast success {shown['last_success_at'] or 'never'}, last status "
          f"{shown['last_status'] or '-'}, last duration "
          f"{'-' if duration is None else f'{duration:.1f}s'}")
    print(f"\nPINGS ({len(found['pings'])}, newest first)")
    for p in found["pings"]:
        kind = p["kind"] if p["exit_status"] is None else f"{p['kind']}/{p['exit_status']}"
        took = "" if p["duration"] is None else f"{p['duration']:.1f}s"
        body = " ".join((p["body"] or "").split())[:60]
        print(f"  {p['at']:<25} {kind:<9} {took:>8} {p['method']:<4} "
              f"{p['remote_addr'] or '-':<15} {p['rid'] or '':<10} {body}".rstrip())
    print(f"\nFLIPS ({len(found['flips'])}, newest first)")
    for f in found["flips"]:
        print(f"  {f['at']:<25} {f['from']} -> {f['to']} (alert {f['alert']})")
    return 0


def cmd_monitors(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    """`runnerd monitors [pause|resume|show NAME]`."""
    settings = config.load(path, environ)
    now = time.time()
    if args.action is not None:
        if args.name is None:
            raise shared.Usage(f"monitors {args.action} needs a monitor name")
        if args.name not in monitors.specs(settings):
            raise errors.NotFound(f"no monitor named {args.name!r} in {path}")
        if args.action == "show":
            return _show(args, settings, _listing(settings)[args.name])
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
        raise shared.Usage(f"unexpected argument {args.name!r}")
    out = list(_listing(settings).values())
    if args.json:
        shared.print_json(out)
        return 0
    if not out:
        print("no monitors configured")
        return 0
    print(f"{'MONITOR':<28} {'KIND':<5} {'STATE':<7} {'EXPECTS':<24} {'LAST SUCCESS':<25} "
          "LAST STATUS")
    for m in out:
        expects = _expects(m)
        print(f"{m['name'][:28]:<28} {m['kind']:<5} {m['state']:<7} {expects[:24]:<24} "
              f"{m['last_success_at'] or 'never':<25} {m['last_status'] or '-'}")
        if m["schedule_in_words"]:
            print(f"{'':<42}{m['schedule_in_words']} ({settings.timezone})")
    return 0


def _listing(settings: config.Settings) -> dict[str, dict[str, Any]]:
    """Each configured monitor with its row (a monitor that never reported: `new`)."""
    found = shared.with_db(settings, lambda d: d.read(lambda tx: {
        r["name"]: r for r in taskstatus.rows(tx)}))
    out = {}
    for monitor in settings.monitors:
        row = found.get(monitor.name) or {"state": "new", "last_status": None,
                                          "last_success_at": None, "last_run_at": None,
                                          "last_duration": None}
        words = (cron.describe(cron.parse(monitor.schedule)) if monitor.schedule is not None
                 else None)
        out[monitor.name] = {"name": monitor.name, "kind": "task" if monitor.task else "ping",
                             "period": monitor.period, "schedule": monitor.schedule,
                             "schedule_in_words": words,
                             "grace": monitor.grace, **{k: v for k, v in row.items()
                                                        if k not in ("name", "monitor")}}
    return out


def cmd_workers(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    """`runnerd workers`: one line per daemon process seen (each with its node), newest first;
    alive: not stopped, and beat within `node_timeout`."""
    settings = config.load(path, environ)
    now = time.time()
    rows = shared.with_db(settings, lambda d: d.read(
        lambda tx: heartbeat.rows(tx, now, settings.node_timeout)))
    if args.json:
        shared.print_json(rows)
        return 0
    if not rows:
        print("no workers have run on this database")
        return 0
    print(f"{'NODE':<16} {'WORKER':<36} {'ALIVE':<7} {'HEALTHY':<8} {'ACTIVE':>6} "
          f"{'BEAT AGE':>9} {'UPTIME':>9}  PROBLEM")
    for r in rows:
        state = "stopped" if r["stopped_at"] else ("yes" if r["healthy"] else "NO")
        print(f"{(r['node'] or '-')[:16]:<16} {r['id'][:36]:<36} "
              f"{'yes' if r['alive'] else 'no':<7} {state:<8} {r['active_runs']:>6} "
              f"{r['heartbeat_age_seconds']:>8.1f}s {r['uptime_seconds']:>8.0f}s  "
              f"{r['problem'] or ''}")
    return 0
