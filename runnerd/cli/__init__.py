"""The `runnerd` command line: the daemon and the operator's tools (SPEC §10).

Every command takes `-c CONFIG` before or after its name (default: $RUNNERD_CONFIG, then
/etc/runnerd/runnerd.yaml), prints human-readable output, `--json` where a script would want it,
and exits non-zero with one clear line on bad input.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from runnerd import __version__, actions, config, errors, logs, models
from runnerd.cli import monitoring, shared
from runnerd.queue import operator, retention, runs
from runnerd.store import db, dbfiles

DEFAULT_CONFIG = "/etc/runnerd/runnerd.yaml"


class _Parser(argparse.ArgumentParser):
    """argparse with one line on bad input, instead of the usage and then the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="CONFIG",
                        help="configuration file (default: $RUNNERD_CONFIG, then "
                             f"{DEFAULT_CONFIG})")
    jsonable = _Parser(add_help=False)
    jsonable.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = _Parser(
        prog="runnerd", parents=[common],
        description="A self-hosted automation and monitoring daemon (Mechanic's model, on SQLite "
                    "or PostgreSQL).")
    p.add_argument("-V", "--version", action="version", version=f"runnerd {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, *parents: _Parser,
            aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, aliases=list(aliases),
                              parents=[common, *parents])

    add("run", "run the daemon (webhooks, scheduler, worker)")
    add("check", "validate the configuration and compile every task; exit 0 or 1", jsonable)
    s = add("send", "store an event on any topic (e.g. mechanic/scheduler/10min to test a task)",
            jsonable)
    s.add_argument("topic")
    s.add_argument("--data", default=None, help="the event's data as JSON (default: null)")
    s = add("trigger", "send mechanic/user/trigger (or mechanic/user/text) to one task", jsonable)
    s.add_argument("task")
    s.add_argument("--text", default=None, help="send mechanic/user/text with this text")
    s = add("runs", "list runs, or: runs show|retry|cancel ID", jsonable)
    s.add_argument("action", nargs="?", choices=["show", "retry", "cancel"])
    s.add_argument("id", nargs="?")
    s.add_argument("--state", choices=[x.value for x in models.RunState])
    s.add_argument("--kind", choices=[x.value for x in models.RunKind])
    s.add_argument("--task")
    s.add_argument("--limit", type=int, default=50)
    add("queue", "queue depth by kind and state, lag, what waits most", jsonable,
        aliases=["status"])
    s = add("cache", "read or write the cache: cache get KEY | set KEY VALUE [--ttl S] | del KEY",
            jsonable)
    s.add_argument("op", choices=["get", "set", "del"])
    s.add_argument("key")
    s.add_argument("value", nargs="?")
    s.add_argument("--ttl", type=int, default=None, help="seconds (default and max: 5184000)")
    s = add("preview", "render a task against a synthetic event; perform nothing", jsonable)
    s.add_argument("task")
    s.add_argument("--topic", help="the event's topic (default: the task's first preview event "
                                   "or subscription)")
    data = s.add_mutually_exclusive_group()
    data.add_argument("--data", help="the event's data as JSON")
    data.add_argument("--data-file", help="read the event's data (JSON) from this file")
    s = add("import", "print a Mechanic task export (JSON) as a runnerd task (YAML)", jsonable)
    s.add_argument("file")
    s = add("prune", "apply retention now: event trees, expired cache keys, old monitor flips "
            "and pings, outbox, workers and scheduler slots", jsonable)
    s = add("backup", "write a consistent copy of the database (safe while the daemon runs)",
            jsonable)
    s.add_argument("path")
    monitoring.add_parsers(add, jsonable)  # monitor tasks, monitors, workers
    return p


def _config_path(args: argparse.Namespace, environ: dict[str, str]) -> str:
    return getattr(args, "config", None) or environ.get("RUNNERD_CONFIG") or DEFAULT_CONFIG


def _parse_json_arg(text: str | None, what: str) -> Any:
    """The API's and the webhooks' rule (`models.parse_json`), or one line naming `what`."""
    if text is None:
        return None
    try:
        return models.parse_json(text)
    except ValueError as exc:
        raise errors.InvalidInput(f"{what} is not valid JSON: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `runnerd` console script."""
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    logs.configure(args.verbose, environ)
    path = _config_path(args, environ)
    try:
        return COMMANDS[_canonical(args.command)](args, path, environ)
    except shared.Usage as exc:
        print(f"runnerd {args.command}: {_line(exc.message)} (see runnerd {args.command} --help)",
              file=sys.stderr)
        return shared.EXIT_USAGE
    except errors.ConfigError as exc:
        for problem in exc.problems:
            print(f"runnerd: config: {_line(problem)}", file=sys.stderr)
        return shared.EXIT_FAIL
    except errors.RunnerdError as exc:
        print(f"runnerd: {_line(exc.message)}", file=sys.stderr)
        return shared.EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `runnerd runs --json | head`: the reader has gone, so say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again
        return shared.EXIT_FAIL


def _line(text: str) -> str:
    """One line, whatever the user typed: line breaks and control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _canonical(command: str) -> str:
    return {"status": "queue"}.get(command, command)


def cmd_run(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    from runnerd import daemon

    return daemon.run(path, environ)


def cmd_check(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    from runnerd import daemon

    try:
        reg = daemon.load(path, environ)
    except errors.ConfigError as exc:
        if not args.json:
            raise
        shared.print_json({"path": path, "ok": False, "problems": exc.problems})
        return shared.EXIT_FAIL
    s = reg.settings
    if args.json:
        shared.print_json({"path": path, "ok": True, "tasks": len(reg.tasks),
                           "webhooks": len(s.webhooks), "monitors": len(s.monitors),
                           "database": s.database_name})
        return 0
    print(f"{path}: OK: {len(reg.tasks)} task(s), {len(s.webhooks)} webhook(s), "
          f"{len(s.monitors)} monitor(s); database {s.database_name}")
    for note in reg.notes:
        print(f"note: {note}")
    return 0


def cmd_send(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    settings = config.load(path, environ)
    data = _parse_json_arg(args.data, "--data")
    event_id = shared.with_db(settings, lambda d: operator.send(
        d, args.topic, data, source="cli", now=time.time()))
    shared.print_json({"id": event_id}) if args.json else print(event_id)
    return 0


def cmd_trigger(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    from runnerd import daemon

    reg = daemon.load(path, environ)
    event_id = shared.with_db(reg.settings, lambda d: operator.trigger(
        d, reg, args.task, text=args.text, source="cli", now=time.time()))
    shared.print_json({"id": event_id}) if args.json else print(event_id)
    return 0


def cmd_runs(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    settings = config.load(path, environ)

    # Each action type's own redaction; the executors (aiohttp, aiosmtplib) are imported only
    # when an action run is shown.
    @functools.cache
    def executors() -> actions.Registry:
        from runnerd.actions import executors as action_executors

        return action_executors.build(settings)

    def redact(action_type: str | None, options: Any) -> Any:
        return executors().redact(action_type, options)

    if args.action is None:
        if args.id is not None:
            raise shared.Usage(f"unexpected argument {args.id!r}: use runs show ID")
        limit = operator.check_filters(args.state, args.kind, args.task, args.limit)

        async def listing(d: db.Database) -> list[dict[str, Any]]:
            return await d.read(lambda tx: [
                operator.run_json(tx, r, redact) for r in runs.select(
                    tx, state=args.state, kind=args.kind, task=args.task, limit=limit)])

        rows = shared.with_db(settings, listing)
        if args.json:
            shared.print_json(rows)
        else:
            _print_runs(rows)
        return 0
    if args.id is None:
        raise shared.Usage(f"runs {args.action} needs a run id")
    run_id = operator.parse_run_id(args.id)
    now = time.time()

    async def act(d: db.Database) -> dict[str, Any]:
        if args.action == "show":
            return await d.read(lambda tx: operator.run_json(tx, runs.get(tx, run_id), redact,
                                                        detail=True))
        return await operator.move_run(d, args.action, run_id, now, redact)

    out = shared.with_db(settings, act)
    if args.json or args.action == "show":
        shared.print_json(out)
    else:
        print(f"run {out['id']} ({out['kind']}) is now {out['state']}")
    return 0


def _print_runs(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no runs")
        return
    print(f"{'ID':>8}  {'KIND':<6} {'STATE':<11} {'ATT':>3}  {'TASK / ACTION':<32} "
          f"{'CREATED':<24} ERROR")
    for r in rows:
        what = r["task_name"] or ""
        if r["action_type"]:
            what = f"{what} / {r['action_type']}"
        error = (r["error"] or "").splitlines()[0][:60] if r["error"] else ""
        print(f"{r['id']:>8}  {r['kind']:<6} {r['state']:<11} {r['attempts']:>3}  "
              f"{what[:32]:<32} {r['created_at']:<24} {error}")


def cmd_queue(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    settings = config.load(path, environ)
    now = time.time()
    out = shared.with_db(settings, lambda d: d.read(lambda tx: runs.stats(tx, now)))
    if args.json:
        shared.print_json(out)
        return 0
    print(f"{'KIND':<8}" + "".join(f"{s:>12}" for s in ("unscheduled", "scheduled", "due",
                                                         "started")))
    for kind, counts in out["queue"].items():
        print(f"{kind:<8}" + "".join(f"{counts.get(s, 0):>12}" for s in (
            "unscheduled", "scheduled", "due", "started")))
    print(f"queue lag: {out['lag_seconds']:.3f} s (age of the oldest due run)")
    day = out["last_24h"]
    print("last 24 h: " + ", ".join(
        f"{k} {v.get('succeeded', 0)} succeeded / {v.get('failed', 0)} failed"
        for k, v in day.items()))
    for key, title in (("top_waiting_tasks", "waiting tasks"),
                       ("top_waiting_actions", "waiting action types"),
                       ("top_waiting_topics", "waiting event topics")):
        if out[key]:
            print(f"{title}: " + ", ".join(f"{x['name']} ({x['runs']})" for x in out[key]))
    return 0


def cmd_cache(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    from runnerd.store import cache

    settings = config.load(path, environ)
    now = time.time()
    key = args.key
    if args.op != "set" and args.value is not None:
        raise shared.Usage(f"cache {args.op} takes only a key")
    try:  # the cache action's checks, as the command's errors
        cache.check_key(key)
        ttl = cache.check_ttl(args.ttl)
        if args.op == "set":
            if args.value is None:
                raise shared.Usage("cache set needs KEY VALUE")
            try:
                value = models.parse_json(args.value)
            except ValueError:
                value = args.value  # not JSON: a plain string
            cache.encode_value(value)
    except errors.InvalidAction as exc:
        raise errors.InvalidInput(exc.message.removeprefix("cache: ")) from None
    if args.op == "get":
        row = shared.with_db(settings, lambda d: d.read(
            lambda tx: tx.one("cache_get", {"key": key, "now": now})))
        if args.json:
            shared.print_json({"key": key, "found": row is not None,
                               "value": None if row is None else models.loads(row["value"])})
        elif row is not None:
            print(row["value"])
        return 0 if row is not None else shared.EXIT_FAIL
    if args.op == "del":
        existed = shared.with_db(settings, lambda d: d.write(
            lambda tx: cache.delete(tx, key)))
        shared.print_json({"key": key, "deleted": existed}) if args.json else print(
            "deleted" if existed else "absent")
        return 0
    shared.with_db(settings, lambda d: d.write(
        lambda tx: cache.put(tx, key, value, ttl, now)))
    shared.print_json({"key": key, "set": True, "ttl": ttl}) if args.json else print("OK")
    return 0


def cmd_preview(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    from runnerd import daemon
    from runnerd.actions import executors as action_executors
    from runnerd.engine import preview

    reg = daemon.load(path, environ)
    has_data = args.data is not None or args.data_file is not None
    if args.data_file is not None:
        try:
            with open(args.data_file, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise errors.InvalidInput(f"--data-file: cannot read {args.data_file}: "
                                      f"{exc.strerror}") from None
        except ValueError:  # a NUL in the path
            raise errors.InvalidInput(f"--data-file: bad path {args.data_file!r}") from None
        except UnicodeDecodeError:
            raise errors.InvalidInput(f"--data-file: {args.data_file} is not UTF-8 text"
                                      ) from None
        data = _parse_json_arg(text, "--data-file")
    else:
        data = _parse_json_arg(args.data, "--data")
    topic = operator.check_topic(args.topic) if args.topic is not None else None
    out = preview.preview(reg, action_executors.build(reg.settings), args.task, topic=topic,
                          data=data, has_data=has_data, now=time.time())
    if args.json:
        shared.print_json({k: out[k] for k in ("actions", "logs", "errors")})
    else:
        print(f"event: {out['event']['topic']} data={json.dumps(out['event']['data'])}")
        for action in out["actions"]:
            print(f"action {action['type']}: {json.dumps(action['options'], ensure_ascii=False)}"
                  + (f" meta={json.dumps(action['meta'])}" if action["meta"] is not None else ""))
        for entry in out["logs"]:
            print(f"log: {json.dumps(entry, ensure_ascii=False)}")
        for entry in out["errors"]:
            print(f"error: {entry if isinstance(entry, str) else json.dumps(entry)}")
        if not (out["actions"] or out["logs"] or out["errors"]):
            print("(no actions, logs or errors)")
    return shared.EXIT_FAIL if out["errors"] else 0


def cmd_import(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    from runnerd.tasks import mechanic_export

    text, notes = mechanic_export.export_to_yaml(args.file)
    if args.json:
        shared.print_json({"file": args.file, "yaml": text, "notes": notes})
        return 0
    print(text, end="")
    for note in notes:
        print(f"runnerd: {note}", file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    settings = config.load(path, environ)
    shared.progress(f"prune: applying retention ({settings.retention_days:g} days, "
                    f"{settings.retention_days_failed:g} with a failure) to {settings.database_name}")

    def batch(done: dict[str, Any]) -> None:
        shared.progress(f"prune: {done['events']} event(s), {done['runs']} run(s) so far")

    out = shared.with_db(settings, lambda d: retention.prune(d, settings, time.time(),
                                                              on_batch=batch))
    if not out:
        raise errors.RunnerdError("prune: another runnerd is applying retention now; "
                                  "nothing pruned")
    if args.json:
        shared.print_json(out)
    else:
        print(f"pruned {out['events_pruned']} event(s) with their {out['runs_pruned']} run(s); "
              f"purged {out['cache_keys_purged']} expired cache key(s); pruned "
              f"{out['monitor_flips_pruned']} monitor flip(s), "
              f"{out['monitor_pings_pruned']} monitor ping(s), {out['outbox_pruned']} outbox "
              f"message(s), {out['workers_pruned']} workers row(s), "
              f"{out['scheduler_slots_pruned']} scheduler slot(s)")
    return 0


def cmd_backup(args: argparse.Namespace, path: str, environ: dict[str, str]) -> int:
    settings = config.load(path, environ)
    if settings.database_url is not None:
        return _backup_postgres(args, settings)
    try:
        size = f"{os.path.getsize(settings.database) / 1e6:.1f} MB"
    except OSError:
        size = "size unknown"
    shared.progress(f"backup: copying {settings.database} ({size}) to {args.path}")
    pages = dbfiles.backup(settings.database, args.path)
    if args.json:
        shared.print_json({"database": str(settings.database), "path": args.path,
                           "pages": pages})
    else:
        print(f"backed up {settings.database} to {args.path} ({pages} pages)")
    return 0


def _backup_postgres(args: argparse.Namespace, settings: config.Settings) -> int:
    """`runnerd backup` on a URL: a pg_dump archive (`store.pg.backup`)."""
    from runnerd.store import pg  # noqa: PLC0415 - only a PostgreSQL user needs psycopg

    assert settings.database_url is not None
    shared.progress(f"backup: dumping {settings.database_name} to {args.path}")
    size = pg.backup(settings.database_url, args.path)
    if args.json:
        shared.print_json({"database": settings.database_name, "path": args.path,
                           "bytes": size})
    else:
        print(f"backed up {settings.database_name} to {args.path} ({size} bytes; restore with "
              "pg_restore)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, str, dict[str, str]], int]] = {
    "run": cmd_run, "check": cmd_check, "send": cmd_send, "trigger": cmd_trigger,
    "runs": cmd_runs, "queue": cmd_queue, "cache": cmd_cache, "prune": cmd_prune,
    "backup": cmd_backup, "preview": cmd_preview, "import": cmd_import,
    "monitor": monitoring.cmd_monitor, "monitors": monitoring.cmd_monitors,
    "workers": monitoring.cmd_workers,
}
