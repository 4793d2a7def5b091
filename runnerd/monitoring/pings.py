"""Pings, Healthchecks' URL scheme, and their history.

    /ping/{name}          success          /ping/{name}/0        success (exit status 0)
    /ping/{name}/start    the job started  /ping/{name}/{1-255}  failure (that exit status)
    /ping/{name}/fail     failure          /ping/{name}/log      recorded, no state change

An optional `?rid=` pairs a start with its finish: a success or failure right after a start of
the same run id (or, without one, after a start without one) records the job's duration. Every
ping is kept with its body (at most `monitoring.ping_body_limit` bytes); a monitor keeps its latest
`monitoring.ping_history` pings, and retention removes older ones. A failure's body is its error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runnerd import models
from runnerd.queue import taskstatus
from runnerd.store import db

#: What a ping kind reports to `task_status` (a log ping reports nothing).
STATUS = {"success": "succeeded", "start": "started", "fail": "failed"}
#: The most of a ping's body the history lists (`runnerd monitors show`).
EXCERPT_CHARS = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """One ping as received."""

    name: str
    kind: str  #: success, start, fail or log
    body: bytes = b""
    method: str = "GET"
    remote_addr: str | None = None
    rid: str | None = None
    exit_status: int | None = None


def kind_of(suffix: str) -> tuple[str, int | None] | None:
    """The kind and exit status a URL suffix means ("", start, fail, log, 0-255); None: 404."""
    if suffix in ("", "start", "fail", "log"):
        return suffix or "success", None
    if suffix.isdigit() and len(suffix) <= 3 and int(suffix) <= 255:
        code = int(suffix)
        return ("success" if code == 0 else "fail"), code
    return None


def _error(ping: Ping, text: str) -> str:
    """A failure's error: its body, else what reported it."""
    if text.strip():
        return text.strip()
    if ping.exit_status is not None:
        return f"exit status {ping.exit_status} reported by /ping/{ping.name}/{ping.exit_status}"
    return f"failure reported by /ping/{ping.name}/fail"


def record(tx: db.Tx, ping: Ping, now: float, *, body_limit: int,
           keep: int) -> list[models.Event]:
    """Store the ping (trimming the monitor's history to `keep`) and report it to its row;
    returns the events a flip created."""
    text = ping.body[:body_limit].decode("utf-8", errors="replace")
    duration = None
    if ping.kind in ("success", "fail"):
        previous = tx.one("ping_previous", {"name": ping.name, "rid": ping.rid})
        if previous is not None and previous["kind"] == "start":
            duration = max(0.0, now - previous["created_at"])
    tx.execute("ping_insert", {
        "name": ping.name, "now": now, "kind": ping.kind, "exit_status": ping.exit_status,
        "rid": ping.rid, "duration": duration, "method": ping.method,
        "remote_addr": ping.remote_addr, "body": text or None, "body_bytes": len(ping.body)})
    tx.execute("pings_trim", {"name": ping.name, "keep": keep})
    if ping.kind == "log":
        return []
    error = _error(ping, text) if ping.kind == "fail" else None
    events = taskstatus.record(tx, ping.name, STATUS[ping.kind], now, error)
    if duration is not None:
        tx.execute("status_duration", {"name": ping.name, "duration": duration})
    return events


def ping_json(row: Any) -> dict[str, Any]:
    """A stored ping for the CLI: its body cut to an excerpt."""
    body = row["body"] or ""
    return {"at": models.iso(row["created_at"]), "kind": row["kind"],
            "exit_status": row["exit_status"], "rid": row["rid"], "duration": row["duration"],
            "method": row["method"], "remote_addr": row["remote_addr"],
            "body": body[:EXCERPT_CHARS] + ("…" if len(body) > EXCERPT_CHARS else ""),
            "body_bytes": row["body_bytes"]}


def history(tx: db.Tx, name: str, limit: int) -> dict[str, Any]:
    """A monitor's latest pings and flips, newest first (`runnerd monitors show`)."""
    flips = [{"at": models.iso(f["created_at"]), "from": f["old_state"], "to": f["new_state"],
              "alert": f["mail_state"]} for f in tx.all("flips_of", {"name": name,
                                                                    "limit": limit})]
    return {"pings": [ping_json(r) for r in tx.all("pings_recent", {"name": name,
                                                                     "limit": limit})],
            "flips": flips}
