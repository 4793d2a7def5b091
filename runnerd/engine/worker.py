"""The claim loop: one transaction per turn records what finished and claims what is next.

Action runs are performed as asyncio tasks, at most `concurrency` at once. Task runs take no
slot: a render is CPU work on this thread, so the worker renders the due task runs one at a time
right after each turn (for at most `RENDER_BATCH_SECONDS`, yielding to the event loop between
renders) and records them in the next turn, straight from `due`. Task runs may also be handed
over (`offer`: the engine's fast path for a webhook batch, see the package docstring): the
worker renders them before its next turn instead of fetching them in it. Event runs take no slot
and are never claimed: routing is a lookup in memory, so the turn's transaction routes the due
ones with the engine's `route` (`runs.route_due`) and fetches their task runs with the others;
slow action runs holding every slot hold up neither. The worker performs no run itself: it gets
`Kinds` (how a task run is rendered, synchronously, and how an action run is performed), the
event router and a lane function. It
wakes when the webhook, the scheduler or a finished run says there is work, and polls so that
scheduled runs and retries come due.

On PostgreSQL several nodes' workers share the queue (SPEC §14): the worker claims, routes and
leases as its `node` (`runs.finish_and_claim`), so what one node takes no other performs, and
`_held` only keeps this node from rendering a run it holds twice.

Lanes: a run may belong to a lane (an http action run: its target host). At most `lane_cap` runs
of one lane are started at once; a claimed run over the cap is handed back, `scheduled` a moment
later with its attempt uncounted, and the slot goes to the next run in the queue. So one slow or
hanging HTTP target cannot hold every slot while echo, cache or email runs wait behind it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from runnerd import errors, models
from runnerd.queue import runs
from runnerd.store import db

logger = logging.getLogger(__name__)

Handler = Callable[[runs.Job], Awaitable[runs.Outcome]]
Render = Callable[[runs.Job], runs.Outcome]
Lane = Callable[[models.Run], "str | None"]

#: How often the worker looks for scheduled runs that came due, at the latest.
POLL_SECONDS = 0.25
#: An action run's handler that does not finish in this time fails (each action has its own,
#: shorter timeout; a render is limited by `limits.render_seconds`).
RUN_TIMEOUT = 900.0
#: A run handed back because its lane is full waits this long before it is due again.
DEFER_SECONDS = 0.5
#: Claims per turn that may be spent replacing handed-back runs (bounds one transaction).
DEFER_ROUNDS = 8
#: Task runs fetched per turn, and how long the worker renders before it records them (the rest
#: stay due for the next turn): a burst is recorded in steps, never one long transaction.
RENDER_BATCH = 64
RENDER_BATCH_SECONDS = 0.05
#: Due event runs routed per turn.
ROUTE_BATCH = 64


def default_lane_cap(concurrency: int) -> int:
    """Half the slots (at least one) per lane: a slow target always leaves slots for the rest."""
    return max(1, (concurrency + 1) // 2)


@dataclasses.dataclass(frozen=True, slots=True)
class Kinds:
    """What the worker does with the runs it takes (event runs are routed: `runs.Route`)."""

    #: a task run: pure CPU, called on the event loop's thread (nothing to await, so no timeout
    #: could interrupt it: the renderer keeps to `limits.render_seconds` itself)
    render: Render
    #: a claimed action run, awaited in a slot for at most RUN_TIMEOUT
    perform: Handler


class Worker:
    """Claims, performs and finishes runs."""

    def __init__(
        self,
        database: db.Database,
        kinds: Kinds,
        route: runs.Route,
        *,
        concurrency: int,
        clock: Callable[[], float] = time.time,
        poll: float = POLL_SECONDS,
        on_finished: Callable[[list[runs.Outcome]], None] | None = None,
        on_routed: Callable[[int], None] | None = None,
        lane: Lane | None = None,
        lane_cap: int | None = None,
        node: str | None = None,
    ) -> None:
        self.db = database
        self.node = node  #: the node name its claims, leases and finishes are made as
        self.kinds = kinds
        self.route = route
        self.on_routed = on_routed
        self.concurrency = concurrency
        self.clock = clock
        self.poll = poll
        self.on_finished = on_finished
        self.wakeup = asyncio.Event()
        self._done: list[runs.Outcome] = []
        self._active: dict[int, asyncio.Task[None]] = {}
        self.lane = lane
        self.lane_cap = default_lane_cap(concurrency) if lane_cap is None else lane_cap
        self._lanes: collections.Counter[str] = collections.Counter()  #: started runs per lane
        self.deferred = 0  #: runs handed back because their lane was full (since start)
        self.performed_inline = 0  #: in-process action runs finished with their task run
        self.rendered = 0  #: task runs rendered (since start)
        self.routed = 0  #: event runs routed in the worker's transactions (since start)
        self.handed_over = 0  #: of those, task runs rendered as offered, without a fetch
        self.healthy = True  #: False while the database refuses writes
        self._offered: list[runs.Job] = []  #: handed over by `offer`, not rendered yet
        #: task runs offered or fetched and not recorded yet: neither source may add them twice
        self._held: set[int] = set()
        #: due task runs may be left behind (at start, after a full fetch or a render batch out
        #: of time): until a fetch catches up, offers are refused so that the queue's order
        #: (oldest first) holds
        self._behind = True

    @property
    def active(self) -> int:
        """Runs being performed now."""
        return len(self._active)

    @property
    def takes_offers(self) -> bool:
        """Whether `offer` would take task runs now (not behind, room in the batch): when not,
        the ingest stores them due for a fetch instead of making jobs of them."""
        return not self._behind and len(self._offered) < RENDER_BATCH

    def offer(self, jobs: list[runs.Job]) -> None:
        """Due task runs just committed (`runs.insert_events`): render them before the next turn.

        Refused while older due task runs wait (they come first, and the next fetches take these
        in order) or once `RENDER_BATCH` wait already; a refused run simply stays due."""
        if self._behind or len(self._offered) + len(jobs) > RENDER_BATCH:
            self._behind = True
            return
        for job in jobs:
            if job.run.id not in self._held:
                self._held.add(job.run.id)
                self._offered.append(job)
        self.wakeup.set()

    async def run(self, stop: asyncio.Event, *, grace: float = 20.0) -> None:
        """Work until `stop` is set, then finish started runs within `grace` and requeue the rest."""
        while not stop.is_set():
            limit = self._free()
            claimed = await self._turn(claim=True)
            if stop.is_set():
                break
            # A full batch may have left more due runs behind: go again while slots are free.
            if not (claimed and claimed == limit and self._free()):
                await self._idle(stop)
        await self._drain(grace)

    async def run_until_idle(self) -> int:
        """Perform due runs until none is left; return how many were performed: claimed,
        rendered (task runs), routed (event runs) or in place (in-process action runs) (burst
        mode)."""
        total, before = 0, self._performed_here()
        while True:
            claimed = await self._turn(claim=True)
            total += claimed
            if self._active:
                await asyncio.wait(list(self._active.values()))
                continue
            if claimed == 0 and not self._done and not self.wakeup.is_set():
                return total + self._performed_here() - before

    def _performed_here(self) -> int:
        """Runs performed without a slot (since start)."""
        return self.performed_inline + self.rendered + self.routed

    def _free(self) -> int:
        return max(0, self.concurrency - len(self._active))

    async def _turn(self, *, claim: bool) -> int:
        """Render the task runs offered since the last turn; then one transaction: finish what is
        done, claim up to the free slots, route due event runs; then render the due task runs
        it fetched. Returns how many runs were claimed."""
        if claim and self._offered:
            offered, self._offered = self._offered, []
            self.handed_over += await self._render(offered)
        done, self._done = self._done, []
        if not done and not claim:
            return 0
        limit = self._free() if claim else 0
        renders, routes = (RENDER_BATCH, ROUTE_BATCH) if claim else (0, 0)
        now = self.clock()
        self.wakeup.clear()
        busy = collections.Counter(self._lanes)  # a snapshot: the db thread must not see it move
        performed: list[runs.Outcome] = []  # in-process action runs finished on the db thread
        try:
            jobs, task_jobs, routed = await self.db.write(lambda tx: self._finish_and_claim(
                tx, done, limit, now, busy, performed, renders, routes))
        except errors.DatabaseError as exc:
            # Keep the outcomes: the runs stay `started` (or `due`) in the file, so nothing is
            # lost even if we die now; they are written as soon as the database takes writes.
            self._done = done + self._done
            if self.healthy:
                logger.error("cannot record runs: %s", exc, extra={"action": "db_write_failed"})
            self.healthy = False
            await asyncio.sleep(1.0)
            return 0
        self.healthy = True
        self._held.difference_update(o.run.id for o in done if o.run.kind is models.RunKind.TASK)
        self.performed_inline += len(performed)
        self.routed += routed
        if routed and self.on_routed is not None:
            self.on_routed(routed)
        if routed == routes > 0:
            self.wakeup.set()  # a full batch may have left more due event runs behind
        if (done or performed) and self.on_finished is not None:
            self.on_finished(done + performed)
        for job in jobs:
            lane = self.lane(job.run) if self.lane is not None else None
            if lane is not None:
                self._lanes[lane] += 1
            task = asyncio.create_task(self._perform(job, lane), name=f"run-{job.run.id}")
            self._active[job.run.id] = task
        if renders:
            self._behind = len(task_jobs) >= renders
            fetched = [job for job in task_jobs if job.run.id not in self._held]
            self._held.update(job.run.id for job in fetched)
            await self._render(fetched)
        return len(jobs)

    async def _render(self, jobs: list[runs.Job]) -> int:
        """Perform task runs one at a time; those left when the time is up stay due (and the
        worker is then behind). Returns how many were rendered."""
        deadline = time.monotonic() + RENDER_BATCH_SECONDS
        for i, job in enumerate(jobs):
            if i and time.monotonic() > deadline:
                self._behind = True
                self._held.difference_update(left.run.id for left in jobs[i:])
                return i
            self._done.append(self._rendered(runs.begin(job, self.clock())))
            self.rendered += 1
            await asyncio.sleep(0)  # let requests and started runs move between renders
        return len(jobs)

    def _finish_and_claim(self, tx: db.Tx, done: list[runs.Outcome], limit: int, now: float,
                          busy: collections.Counter[str], performed: list[runs.Outcome],
                          renders: int, routes: int
                          ) -> tuple[list[runs.Job], list[runs.Job], int]:
        """On the db thread: finish, claim, route, and hand back claimed runs whose lane is
        full. Returns the claimed jobs kept, the task runs to render and the event runs routed."""
        jobs, task_jobs, routed = runs.finish_and_claim(tx, done, limit, now, self.route,
                                                        performed, renders, routes, self.node)
        if self.lane is None or not jobs:
            return jobs, task_jobs, routed
        kept: list[runs.Job] = []
        for rounds in range(DEFER_ROUNDS, -1, -1):
            handed_back = []
            for job in jobs:
                lane = self.lane(job.run)
                if lane is not None and busy[lane] >= self.lane_cap:
                    handed_back.append(job.run.id)
                    continue
                if lane is not None:
                    busy[lane] += 1
                kept.append(job)
            if not handed_back:
                break
            runs.defer(tx, handed_back, now + DEFER_SECONDS)
            self.deferred += len(handed_back)
            if not rounds:
                break
            # Handed-back runs are scheduled in the future, so this claim takes the next ones.
            jobs = runs.claim(tx, len(handed_back), now, node=self.node)
        return kept, task_jobs, routed

    def _rendered(self, job: runs.Job) -> runs.Outcome:
        """A task run's outcome; a crash becomes a failed outcome."""
        try:
            return self.kinds.render(job)
        except Exception as exc:  # a bug in the renderer must not kill the worker
            return self._crashed(job.run, exc)

    async def _outcome(self, job: runs.Job) -> runs.Outcome:
        """An action run's outcome, with a time limit; a crash or a timeout becomes a failed
        outcome."""
        run = job.run
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                return await self.kinds.perform(job)
        except TimeoutError:
            return runs.Outcome(run, ok=False, error=f"run timed out after {RUN_TIMEOUT:.0f}s",
                                retryable=True, finished_at=self.clock())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a handler must not kill the worker
            return self._crashed(run, exc)

    def _crashed(self, run: models.Run, exc: Exception) -> runs.Outcome:
        logger.exception("run %s crashed", run.id, extra={"action": "run_crashed"})
        return runs.Outcome(run, ok=False, error=f"internal error: {exc!r}",
                            finished_at=self.clock())

    async def _perform(self, job: runs.Job, lane: str | None = None) -> None:
        try:
            outcome = await self._outcome(job)
        finally:
            self._active.pop(job.run.id, None)
            if lane is not None:
                self._lanes[lane] -= 1
                if self._lanes[lane] <= 0:
                    del self._lanes[lane]
        self._done.append(outcome)
        self.wakeup.set()

    async def _idle(self, stop: asyncio.Event) -> None:
        if self._done or self._offered:
            return
        waiters = [asyncio.ensure_future(self.wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drain(self, grace: float) -> None:
        """Stop claiming; let started runs finish within `grace`; requeue what is left."""
        deadline = time.monotonic() + grace
        while self._active and time.monotonic() < deadline:
            await asyncio.wait(list(self._active.values()),
                               timeout=max(0.0, deadline - time.monotonic()))
            await self._turn(claim=False)
        interrupted = list(self._active)
        for task in list(self._active.values()):
            task.cancel()
        for task in list(self._active.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _ in range(3):
            try:
                await asyncio.shield(self._turn(claim=False))
                if interrupted:
                    await asyncio.shield(self.db.write(
                        lambda tx: runs.requeue(tx, interrupted, self.clock(), self.node)))
                    logger.info("requeued %d interrupted run(s)", len(interrupted),
                                extra={"action": "runs_requeued"})
                break
            except errors.DatabaseError:
                await asyncio.sleep(0.5)
