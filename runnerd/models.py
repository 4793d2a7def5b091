"""The vocabulary shared by every part: run kinds and states, events, runs, action specs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import random
import time
from enum import StrEnum
from typing import Any, Protocol


class Columns(Protocol):
    """A stored row as the store hands it out (`store.db.Row`, or a dict): columns by name."""

    def __getitem__(self, column: str, /) -> Any:
        """The column's value."""


class RunKind(StrEnum):
    """What a run does."""

    EVENT = "event"  #: finds subscribed tasks and creates their task runs
    TASK = "task"  #: renders a task's Liquid and creates its action runs
    ACTION = "action"  #: performs one action


class RunState(StrEnum):
    """The six states of a run (Mechanic's)."""

    UNSCHEDULED = "unscheduled"  #: created without a time; runnerd itself never writes it today
    SCHEDULED = "scheduled"  #: waiting for run_at (a delay, an offset or a retry)
    DUE = "due"  #: waiting for a worker
    STARTED = "started"  #: being performed
    FAILED = "failed"  #: performed and failed for good (or cancelled)
    SUCCEEDED = "succeeded"  #: performed


#: Among due runs: action runs first, then task runs, then event runs.
PRIORITY = {RunKind.ACTION: 3, RunKind.TASK: 2, RunKind.EVENT: 1}


#: The largest SQLite INTEGER (signed 64 bits): run ids and cache counters stay within it.
MAX_INT64 = 2**63 - 1

#: mechanic/errors/event: an event filter failed (no task to blame: only tasks subscribed to
#: error topics alone receive it).
EVENT_ERROR_TOPIC = "mechanic/errors/event"
ERROR_TOPICS = frozenset({"mechanic/errors/task", "mechanic/errors/action", EVENT_ERROR_TOPIC})
#: The action types runnerd performs (runnerd/actions/ has one executor for each).
ACTION_TYPES = frozenset({"cache", "echo", "email", "event", "http"})
PERFORM_TOPIC = "mechanic/actions/perform"


def loads(text: str | bytes | None) -> Any:
    """Decode a JSON column (None stays None)."""
    return None if text is None else json.loads(text)


#: The random part of ids. Ids are not secrets, so a Mersenne Twister seeded from the OS (once)
#: will do; `os.urandom` per id released the GIL on every call, so each webhook request waited
#: for the database thread to hand the GIL back (7 % of the event loop's samples under load).
_random = random.Random(os.urandom(32))


def new_id() -> str:
    """A new id: a time-ordered UUID (version 7, RFC 9562) as text.

    48 bits of Unix milliseconds, then 74 random bits. Ids made later sort later, so inserts
    into `events` (its primary key) and `runs_event` land at the right edge of their B-trees: a
    group commit of 64 webhooks dirties a few pages instead of ~128 random ones, which made
    commits 3-4x faster on a 300k-event file than with random (version 4) ids.
    """
    rand = _random.getrandbits(74)
    h = "%032x" % ((time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (rand >> 62) << 64
                   | 0b10 << 62 | rand & _RAND_LOW)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_RAND_LOW = (1 << 62) - 1  #: the 62 random bits after the variant


def dumps(value: Any) -> str:
    """Encode a value for a JSON column: compact, UTF-8, stable, and always valid JSON.

    NaN and ±Infinity (which `json.dumps` would write as invalid tokens) become null; text with
    lone surrogates (from `"\\ud800"` escapes or undecodable headers), which SQLite cannot store
    as UTF-8, is written with `\\u` escapes instead.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # a non-finite float (or a cycle, which fails again below)
        value = _finite(value)
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


#: Deeper JSON is refused wherever runnerd is given JSON: encoding, decoding and rendering such
#: data again later (on the worker's stack, below its own frames) could exhaust Python's
#: recursion limit and take the daemon down at every start while its run stays queued.
MAX_JSON_DEPTH = 128


def parse_json(text: str | bytes) -> Any:
    """Strict JSON (RFC 8259), the rule for every body and argument runnerd is given.

    ValueError, whose text says why, for anything else: NaN and Infinity, a number that only
    fits as infinity (1e400), nesting deeper than MAX_JSON_DEPTH, a lone surrogate (`"\\ud800"`:
    no Unicode character, so no UTF-8 text can hold it, nor PostgreSQL's jsonb).
    """
    try:
        value = _loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    # Only a text with that many brackets can be that deep: counting them costs next to nothing.
    opened = text.count("[") + text.count("{") if isinstance(text, str) else (
        text.count(b"[") + text.count(b"{"))
    if opened > MAX_JSON_DEPTH and too_deep(value):
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    if _may_hold_surrogates(text) and (lone := _lone_surrogate(value)) is not None:
        raise ValueError(f"\\u{ord(lone):04x} is a lone surrogate, not a Unicode character")
    return value


def _may_hold_surrogates(text: str | bytes) -> bool:
    """Whether a JSON text may hold a lone surrogate: it has a \\ud escape, or may have one
    encoded (a str with non-ASCII, bytes with 0xED: U+D000..U+DFFF's first byte). The usual body
    has neither, found at memchr speed; only the others are encoded once to be sure."""
    if isinstance(text, bytes):
        return b"\\ud" in text or b"\\uD" in text or b"\xed" in text
    return "\\ud" in text or "\\uD" in text or not text.isascii()


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in `value`'s strings and keys (None: there is none)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.object[exc.start]
    return None


def _loads(text: str | bytes) -> Any:
    """`json.loads` with the strict hooks, on one decoder made once (`json.loads` makes a
    decoder per call when it is given hooks: a tenth of a webhook's own time)."""
    if isinstance(text, str):
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    else:
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    return _DECODER.decode(text)


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in `value` nest more than `limit` deep (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > limit:
                return True
            stack += ((x, depth + 1) for x in (item.values() if isinstance(item, dict) else item))
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC text (the form shown to users and to Liquid)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event: a topic and its data."""

    id: str
    topic: str
    data: Any
    source: str
    created_at: float
    parent_id: str | None = None
    webhook_request_id: str | None = None
    task_ids: tuple[str, ...] | None = None  #: only these tasks may respond (None: any)
    run_at: float | None = None  #: when its event run is due (None: now)
    #: `data` as the JSON text it arrived in, when it did (a webhook's body): stored as is
    data_json: str | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Columns) -> Event:
        """Build from an `events` row."""
        task_ids = loads(row["task_ids"])
        return cls(
            id=row["id"],
            topic=row["topic"],
            data=loads(row["data"]),
            source=row["source"],
            created_at=row["created_at"],
            parent_id=row["parent_id"],
            webhook_request_id=row["webhook_request_id"],
            task_ids=tuple(task_ids) if task_ids is not None else None,
        )

    def to_liquid(self, parent: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `event` object of Liquid (without `preview`, as in Mechanic's live events)."""
        return {
            "id": self.id,
            "topic": self.topic,
            "data": self.data,
            "source": self.source,
            "created_at": iso(self.created_at),
            "parent": parent,
            "webhook_request_id": self.webhook_request_id,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """One row of `runs`."""

    id: int
    kind: RunKind
    state: RunState
    priority: int
    run_at: float
    event_id: str
    task_name: str | None
    action_type: str | None
    options: Any
    meta: Any
    perform_event: bool
    result: Any
    error: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    task_run_id: int | None = None  #: an action run's task run

    @classmethod
    def from_row(cls, row: Columns) -> Run:
        """Build from a `runs` row."""
        return cls(row["id"], RunKind(row["kind"]), RunState(row["state"]), row["priority"],
                   row["run_at"], row["event_id"], row["task_name"], row["action_type"],
                   loads(row["options"]), loads(row["meta"]), bool(row["perform_event"]),
                   loads(row["result"]), row["error"], row["attempts"], row["created_at"],
                   row["started_at"], row["finished_at"], row["task_run_id"])

    def evolve(self, **changes: Any) -> Run:
        """A copy with `changes` (field: value): `dataclasses.replace` without its per-call
        look at the fields and keyword call, on the worker's path (each run is copied as it
        starts and as it ends)."""
        new = object.__new__(Run)
        for name, get, put in _RUN_SLOTS:
            put(new, changes.pop(name) if name in changes else get(self))
        if changes:
            raise TypeError(f"Run has no field {next(iter(changes))!r}")
        return new

    def to_json(self) -> dict[str, Any]:
        """The run as the CLI and the API show it (JSON columns decoded)."""
        return {
            "id": self.id,
            "kind": str(self.kind),
            "state": str(self.state),
            "priority": self.priority,
            "run_at": iso(self.run_at),
            "event_id": self.event_id,
            "task_name": self.task_name,
            "action_type": self.action_type,
            "options": self.options,
            "meta": self.meta,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "task_run_id": self.task_run_id,
        }


#: (name, read, write) of each field of Run, in order: the slots `Run.evolve` copies (writing
#: through the slot, as a frozen dataclass's own __init__ does).
_RUN_SLOTS = tuple((f.name, getattr(Run, f.name).__get__, getattr(Run, f.name).__set__)
                   for f in dataclasses.fields(Run))


@dataclasses.dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action object rendered by a task: `{"action": {"type", "options", "meta"}}`."""

    type: str
    options: Any
    meta: Any = None
    perform_event: bool = True  #: False when the task said `"__perform_event": false`

    def to_json(self) -> dict[str, Any]:
        """As previews print it."""
        return {"type": self.type, "options": self.options, "meta": self.meta}
