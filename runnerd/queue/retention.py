"""Retention: what `runnerd prune` and the daemon's janitor delete, and when.

Event trees whose runs all finished long enough ago (`retention_days`, or
`retention_days_failed` when one failed) go whole, with their runs and attempts; so do handled
monitor flips, monitor pings, outbox messages, silent workers rows, old scheduler slots and expired cache keys. One process at a time
prunes (`locked`): the daemon's janitor runs on the leading node only (engine.nodes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runnerd import config
from runnerd.store import cache, db

#: Event trees per transaction of `prune`: small enough that the daemon's writes (its
#: busy_timeout is 5 s) never wait long behind a by-hand prune of a large backlog.
PRUNE_BATCH = 1000
#: Rows of `scheduler_slots` older than this go (each topic's latest always stays).
SLOTS_KEEP_SECONDS = 7 * 86400
#: `workers` rows of processes silent for this long are pruned.
WORKERS_KEEP_SECONDS = 7 * 86400


async def prune(database: db.Database, settings: config.Settings, now: float, *,
                batch: int = PRUNE_BATCH,
                on_batch: Callable[[dict[str, Any]], None] = lambda _: None) -> dict[str, int]:
    """`runnerd prune`: retention now, in short transactions until nothing more is due;
    `on_batch` gets the counts so far after each one (the CLI's progress lines). Each
    transaction first takes retention's lock (`locked`): while another node (or `runnerd prune`)
    holds it, this call stops, returning {} if it pruned nothing.

    Expired cache keys, event trees past retention with their runs (`prune_batch`), handled
    monitor flips, monitor pings, outbox messages, silent workers rows and old scheduler slots.
    """
    progress: dict[str, Any] = dict.fromkeys(("events", "runs", "trees", "monitor_flips",
                                              "monitor_pings", "outbox", "workers"), 0)

    def first(tx: db.Tx) -> dict[str, int] | None:
        if not locked(tx):
            return None
        return {"cache_keys_purged": cache.purge(tx, now),
                "scheduler_slots_pruned": tx.execute(
                    "prune_slots", {"before": now - SLOTS_KEEP_SECONDS}).rowcount}

    def step(tx: db.Tx) -> bool:
        """One batch; True while a batch was full (more may be due)."""
        if not locked(tx):
            return False
        before = {k: progress[k] for k in ("trees", "monitor_flips", "monitor_pings", "outbox")}
        prune_batch(tx, now, days=settings.retention_days,
                    days_failed=settings.retention_days_failed, batch=batch, stats=progress)
        return any(progress[k] - n >= batch for k, n in before.items())

    totals = await database.write(first)
    if totals is None:
        return {}  # another node prunes now
    while await database.write(step):
        on_batch(progress)
    on_batch(progress)
    return {**totals, "events_pruned": progress["events"], "runs_pruned": progress["runs"],
            "trees_pruned": progress["trees"],
            "monitor_flips_pruned": progress["monitor_flips"],
            "monitor_pings_pruned": progress["monitor_pings"],
            "outbox_pruned": progress["outbox"], "workers_pruned": progress["workers"]}


def locked(tx: db.Tx) -> bool:
    """Take retention's lock for this transaction: on PostgreSQL an advisory transaction lock,
    so nodes that briefly both think they lead never prune at once; False if another holds it.
    (SQLite's writer lock serialises already.)"""
    row = tx.one("prune_lock")
    return row is not None and bool(row["ok"])


def prune_batch(tx: db.Tx, now: float, *, days: float, days_failed: float, batch: int = 5000,
                stats: dict[str, Any] | None = None) -> int:
    """Delete up to `batch` event trees past retention, and old side-table rows; return how many
    events were deleted.

    A tree is a root event (no parent, or its parent is gone) and every event below it, deleted
    whole with all its runs and their attempts. It goes once every run in it is final and the
    latest one finished more than `days` ago, or `days_failed` when any run in it failed; a tree
    with a run scheduled, due or started is never deleted, however old. The same call deletes
    handled `monitor_flips` rows older than `days_failed`, `monitor_pings` and `outbox` rows older
    than `days` and `workers` rows silent for a week, at most `batch` of each.

    `stats`, when given, gets the counts added to it (`events`, `runs`, `trees`,
    `monitor_flips`, `monitor_pings`, `outbox`, `workers`) and keeps the scan position under `after`, so calls
    in a loop (`prune`) do not rescan the trees they kept.
    """
    cutoff, cutoff_failed = now - days * 86400, now - days_failed * 86400
    out: dict[str, Any] = {} if stats is None else stats
    after_at, after_rid = out.get("after", (float("-inf"), 0))
    page = 500

    def expired(open_runs: int, failed: int, done_at: float) -> bool:
        return not open_runs and done_at < (cutoff_failed if failed else cutoff)

    doomed: list[dict[str, str]] = []
    trees = runs_deleted = 0
    while trees < batch:
        rows = tx.all("prune_roots", {"before": max(cutoff, cutoff_failed), "after_at": after_at,
                                      "after_rid": after_rid, "page": page,
                                      "cutoff_failed": cutoff_failed})
        for row in rows:
            after_at, after_rid = row["created_at"], row["rid"]
            if not expired(row["open"], row["failed"], row["done_at"]):
                continue  # only when retention_days_failed < retention_days
            ids, n = [row["id"]], row["runs"]
            if row["has_children"]:
                tree = tx.all("prune_tree", {"id": row["id"]})
                done = [t["done_at"] for t in tree if t["done_at"] is not None]
                if not expired(sum(t["open"] for t in tree), sum(t["failed"] for t in tree),
                               max(done, default=row["done_at"])):
                    continue
                ids, n = [t["id"] for t in tree], sum(t["runs"] for t in tree)
            doomed.extend({"id": i} for i in ids)
            runs_deleted += n
            trees += 1
            if trees >= batch:
                break
        if len(rows) < page:
            break
    tx.executemany("prune_event", doomed)
    out["after"] = (after_at, after_rid)
    counts = {
        "events": len(doomed), "runs": runs_deleted, "trees": trees,
        "monitor_flips": tx.execute("prune_flips", {"before": cutoff_failed,
                                                    "batch": batch}).rowcount,
        "outbox": tx.execute("prune_outbox", {"before": cutoff, "batch": batch}).rowcount,
        "monitor_pings": tx.execute("prune_pings", {"before": cutoff, "batch": batch}).rowcount,
        "workers": tx.execute("workers_prune", {"id": "", "before": now - WORKERS_KEEP_SECONDS}
                              ).rowcount,
    }
    for key, value in counts.items():
        out[key] = out.get(key, 0) + value
    return len(doomed)
