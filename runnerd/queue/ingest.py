"""Group commit for incoming events: many concurrent webhook requests, one transaction.

`submit(event)` returns only once the event and its event run are committed, so a webhook may
answer 204. While one batch is being written, new submissions gather for the next one. How a
batch is stored is the engine's `store` (it routes the events in the same transaction), and
what it stored goes to the engine's `on_stored` once committed (see runnerd/engine/).

Back-pressure: `admit` says whether a webhook may be taken, from the last count of the task runs
waiting to be rendered (a capped count on the read connection, refreshed in the background when
it is older than `DEPTH_MAX_AGE`), so only a backlog that is really there refuses requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from runnerd import errors, models
from runnerd.queue import runs
from runnerd.store import db

logger = logging.getLogger(__name__)

#: How old (seconds) the count of waiting task runs may be before a webhook has it refreshed.
DEPTH_MAX_AGE = 0.5


class Ingest:
    """Batches events into as few commits as the load allows."""

    def __init__(self, database: db.Database, *,
                 store: Callable[[db.Tx, list[models.Event], float], runs.Stored],
                 on_stored: Callable[[runs.Stored], None],
                 clock: Callable[[], float] = time.time, max_batch: int = 1000) -> None:
        self.db = database
        self.store = store  #: the transaction function that stores a batch
        self.on_stored = on_stored  #: called with what `store` returned, once committed
        self.clock = clock
        self.max_batch = max_batch
        self._pending: list[tuple[models.Event, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._closed = False
        self.due_task_runs = 0  #: task runs waiting to be rendered, at the last count
        self._counted_at = -DEPTH_MAX_AGE  #: when (monotonic) that count was made
        self._counting: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """True once the ingest refuses new events (shutdown)."""
        return self._closed

    def admit(self, max_due_runs: int) -> bool:
        """False while more than `max_due_runs` task runs wait to be rendered (the webhook then
        answers 503), by the last count; a count older than `DEPTH_MAX_AGE` is refreshed in the
        background (the request does not wait for it)."""
        if self._counting is None and time.monotonic() - self._counted_at >= DEPTH_MAX_AGE:
            self._counting = asyncio.create_task(self._count(max_due_runs))
        return self.due_task_runs <= max_due_runs

    async def _count(self, max_due_runs: int) -> None:
        try:
            self.due_task_runs = await self.db.read(
                lambda tx: runs.due_task_depth(tx, max_due_runs + 1))
        except errors.DatabaseError:
            pass  # keep the last count; the write path reports the database's trouble
        finally:
            self._counted_at = time.monotonic()
            self._counting = None

    async def submit(self, event: models.Event) -> None:
        """Store `event` durably; DatabaseError if it could not be stored."""
        if self._closed:
            raise errors.DatabaseError("runnerd is shutting down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._ready.set()
        await future

    async def run(self, stop: asyncio.Event) -> None:
        """Commit batches until `stop`, then commit what is pending and refuse new events."""
        while True:
            if not self._pending:
                if stop.is_set():
                    break
                self._ready.clear()
                waiters = [asyncio.ensure_future(self._ready.wait()),
                           asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                continue
            await self._commit()
        self._closed = True

    async def _commit(self) -> None:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        events = [event for event, _ in batch]
        now = self.clock()
        try:
            stored = await self.db.write(lambda tx: self.store(tx, events, now))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the ingest must live on
            if not isinstance(exc, errors.DatabaseError):
                # Not SQLite saying no (e.g. data it cannot encode): a bug, but one bad batch
                # must not take the listener down; its senders get 503 and may retry.
                logger.exception("cannot store %d event(s)", len(events),
                                 extra={"action": "ingest_failed"})
                exc = errors.DatabaseError(f"cannot store the event: {type(exc).__name__}")
            else:
                logger.error("cannot store %d event(s): %s", len(events), exc,
                             extra={"action": "ingest_failed"})
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        self.on_stored(stored)
