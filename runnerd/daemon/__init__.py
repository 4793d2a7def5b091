"""The composition root: lock, migrate, record the tasks first seen, build the parts, requeue
orphans (or fail those out of attempts: the engine gives their failures), supervise, stop in
order.

The lock is the SQLite file's (one daemon per file), or on PostgreSQL the node's name's (several
nodes per database, one per name: `engine.nodes` says what each node does at start-up and which
one leads), which the heartbeat keeps across server restarts (`Daemon.keep_name`).

Shutdown order on SIGTERM/SIGINT: the HTTP listener stops accepting and drains its requests, then
the ingest queue commits what it holds, the scheduler stops, the worker stops claiming and gives
started runs `shutdown_grace` seconds, requeues what is left, and the database closes. A second
signal gets the default action (an operator can always force an exit). Any part that dies takes
the whole process down with a non-zero exit, so systemd restarts it: never a half-alive daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from runnerd import actions, config, errors
from runnerd.actions import echo, email, event, guard, http
from runnerd.actions import executors as action_executors
from runnerd.config import targets
from runnerd.engine import nodes, paths, scheduler
from runnerd.liquid import render
from runnerd.monitoring import heartbeat, metrics, monitors, sd_notify
from runnerd.queue import ingest, runs, taskstatus
from runnerd.store import backends, db, dbfiles
from runnerd.tasks import registry
from runnerd.web import app, context, listener

if TYPE_CHECKING:
    from runnerd.store import pg

logger = logging.getLogger(__name__)


class ComponentDied(errors.RunnerdError):
    """A part of the daemon stopped unexpectedly."""


def load(path: str, environ: Mapping[str, str]) -> registry.Registry:
    """Load, validate and compile a configuration (ConfigError listing every problem)."""
    settings, problems = config.parse(path, environ)
    renderer = render.Renderer(timezone=settings.timezone, limits=settings.limits)
    try:
        reg = registry.Registry(settings, renderer)
    except errors.ConfigError as exc:
        problems = problems + exc.problems
    if problems:
        raise errors.ConfigError(problems)
    return reg


async def remember_tasks(database: db.Database, reg: registry.Registry, now: float) -> None:
    """Give `reg` its tasks' first sightings (`task.created_at`), recording the new tasks'."""
    names = list(reg.tasks)
    reg.first_seen.update(await database.write(lambda tx: taskstatus.first_seen(tx, names, now)))


def http_policy(settings: config.Settings) -> targets.Policy:
    """Where the http action may connect: `http.allow`, `http.deny`, never this listener."""
    return targets.Policy(settings.http.allow, settings.http.deny,
                          (settings.listen.host, settings.listen.port))


async def _supervise(name: str, coro: Awaitable[None], until: asyncio.Event) -> None:
    """Run a component; ComponentDied if it returns before `until` (its stop) is set."""
    await coro
    if not until.is_set():
        raise ComponentDied(f"{name} stopped unexpectedly")


#: Settings read once at start-up (the listener, the worker, the executors): a reload
#: cannot apply them.
RESTART_ONLY = ("database", "listen", "concurrency", "email", "http")


def restart_only_changes(old: config.Settings, new: config.Settings) -> list[str]:
    """The keys of RESTART_ONLY whose values differ between `old` and `new`."""
    return [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]


async def _after(ready: asyncio.Event, start: Callable[[], Awaitable[None]]) -> None:
    """Run `start()` once `ready` is set."""
    await ready.wait()
    await start()


def _first(group: BaseExceptionGroup[Any], kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in a (nested) exception group."""
    for exc in group.exceptions:
        found = _first(exc, kind) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(found, kind):
            return found
    return None


#: Net container allocations between two young-generation collections (CPython's default is
#: 700). Under the end-to-end load the default collected ~40 times a second at ~0.45 ms each;
#: runs free their objects by reference counting, so the count seldom reaches 7000.
GC_YOUNG_THRESHOLD = 7000


def _settle_memory() -> None:
    """After start-up or a reload: collect, freeze what survives, give free memory back.

    Frozen objects (the compiled tasks, the modules: nearly everything alive now) are left out
    of the collector's full passes, which otherwise walk all of them: ~50 ms pauses under load,
    ~8 ms once frozen. A reload unfreezes first, so the replaced tasks can be collected.
    Start-up garbage (YAML trees, Liquid parse state, migration SQL) is freed but stays in
    glibc's heap; `malloc_trim` returns it, which keeps the idle RSS under its budget. Other C
    libraries (musl) have no such call: nothing to do there.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


@dataclasses.dataclass(frozen=True, slots=True)
class Parts:
    """The running daemon's parts, built by `build`."""

    config: context.Current
    engine: paths.Engine
    ingest: ingest.Ingest
    scheduler: scheduler.Scheduler
    monitors: monitors.Monitors
    heartbeat: heartbeat.Heartbeat
    metrics: metrics.Metrics
    app: web.Application
    leader: nodes.Leader | None  #: PostgreSQL's; None on SQLite (that daemon always leads)


def build(reg: registry.Registry, database: db.Database, executors: actions.Registry,
          reader: db.Reader | None, *, clock: Callable[[], float],
          notifier: sd_notify.Notifier, environ: Mapping[str, str],
          dead_components: Callable[[], list[str]] = list,
          still_named: Callable[[], Awaitable[bool]] | None = None) -> Parts:
    """Every part of the daemon, each built with what it uses (the tests build theirs here).

    `reader`: the event loop's read-only connection (cache reads while rendering);
    `still_named`: the heartbeat's check of the node's name (`Daemon.keep_name`).
    """
    current = context.Current(reg)
    settings = reg.settings
    leader: nodes.Leader | None = None  # PostgreSQL's, built with the engine it recovers for
    counters = metrics.Metrics(node=settings.node,
                               is_leader=lambda: leader is None or leader.is_leader())
    engine = paths.Engine(database, current.get_registry, executors, reader=reader,
                          concurrency=reg.settings.concurrency, clock=clock,
                          on_finished=counters.finished, on_routed=counters.routed,
                          node=reg.settings.node)
    if nodes.shared(database):
        leader = nodes.Leader(database, settings.node, timeout=settings.node_timeout,
                              fail=engine.kinds.interrupted, on_failed=counters.finished,
                              on_requeued=engine.wake, clock=clock)
    is_leader = leader.is_leader if leader is not None else lambda: True
    worker_ = engine.worker
    interval = heartbeat.INTERVAL if leader is None else min(
        heartbeat.INTERVAL, settings.node_timeout / 3)  # other nodes judge it by its beats
    beat = heartbeat.Heartbeat(database, notifier=notifier, clock=clock, node=settings.node,
                               interval=heartbeat.watchdog_interval(environ, interval),
                               active_runs=lambda: worker_.active,
                               db_writable=lambda: worker_.healthy,
                               dead_components=dead_components, still_named=still_named)
    queue = ingest.Ingest(database, store=engine.store_events, on_stored=engine.events_stored,
                          clock=clock)
    ticks = scheduler.Scheduler(database, current.get_registry, on_fire=engine.wake,
                                clock=clock, is_leader=is_leader)
    watch = monitors.Monitors(database, lambda: current.settings, clock=clock,
                              on_event=engine.wake)

    def pinged() -> None:
        engine.wake()
        watch.alerts_wakeup.set()

    application = app.make_app(
        context.Webhooks(current, queue, clock, on_webhook=counters.webhook),
        context.Api(current, database, executors, clock, wake=engine.wake),
        context.Ops(current, database, clock, beat, watch, counters, ticks, wake=pinged))
    return Parts(current, engine, queue, ticks, watch, beat, counters, application, leader)


async def orphans(database: db.Database, parts: Parts, node: str, now: float) -> None:
    """Start-up, before the worker: the runs a crash left started requeued, or failed when that
    was their last attempt (`nodes.requeue_orphans`, with the engine's failures), each failure
    logged and counted as the worker's are."""
    requeued, failed = await nodes.requeue_orphans(database, node,
                                                   parts.engine.kinds.interrupted, now)
    if requeued:
        logger.warning("requeued %d run(s) left started by a crash", requeued,
                       extra={"action": "orphans_requeued"})
    nodes.log_failed(failed)
    parts.metrics.finished(failed)


class Daemon:
    """One running runnerd."""

    def __init__(self, path: str, environ: Mapping[str, str], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.environ = environ
        self.clock = clock
        self.stop = asyncio.Event()
        self.notifier = sd_notify.Notifier(environ.get("NOTIFY_SOCKET"))
        self.parts: Parts | None = None
        self.database: db.Database | None = None
        #: why the daemon stopped by itself (another process took its node's name): raised
        #: once it has stopped in order
        self.failure: errors.RunnerdError | None = None
        #: the reloads' writes of the tasks they see first (held: asyncio keeps weak references)
        self._remembering: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        """Run until a signal; return the exit code."""
        reg = load(self.path, self.environ)
        settings = reg.settings
        with backends.lock_database(settings.database, settings.database_url,
                                    settings.node) as name_lock:
            if settings.database_url is None:
                dbfiles.remove_stale_partials(settings.database.parent)
            database = await backends.open_database(settings.database, settings.database_url).open()
            reader: db.Reader | None = None
            try:
                await database.migrate()
                database.watch()
                await remember_tasks(database, reg, self.clock())
                self.database = database
                reader = database.sync_reader()
                timeout = aiohttp.ClientTimeout(total=settings.http.timeout)
                policy = http_policy(settings)
                async with guard.client_session(policy, timeout) as session:
                    executors = action_executors.build(settings, session, policy)
                    try:
                        await self._serve(reg, database, executors, reader, name_lock)
                    finally:
                        await executors.close()
            finally:
                if reader is not None:
                    reader.close()
                await database.close()
        if self.failure is not None:
            raise self.failure
        return 0

    def keep_name(self, name_lock: pg.NameLock) -> Callable[[], Awaitable[bool]]:
        """The heartbeat's check that this process still holds its node's name (PostgreSQL):
        the lock is taken again after a server restart (on a thread: it may connect); if
        another process took the name meanwhile, the daemon stops in order and exits 1 naming
        it (`failure`), rather than run two nodes under one name."""
        async def keep() -> bool:
            try:
                await asyncio.to_thread(name_lock.keep)  # not held while the server is away:
            except errors.AlreadyRunning as exc:  # beat on, the beat's failure says why
                logger.error("%s: stopping", exc.message, extra={"action": "node_name_taken"})
                self.failure = exc
                self.stop.set()
                return False
            return True
        return keep

    async def _serve(self, reg: registry.Registry, database: db.Database,
                     executors: actions.Registry, reader: db.Reader,
                     name_lock: pg.NameLock | None) -> None:
        settings = reg.settings
        halt = asyncio.Event()
        components: dict[str, asyncio.Task[None]] = {}
        parts = build(reg, database, executors, reader, clock=self.clock,
                      notifier=self.notifier, environ=self.environ,
                      dead_components=lambda: [] if self.stop.is_set() else [
                          name for name, task in components.items() if task.done()],
                      still_named=None if name_lock is None else self.keep_name(name_lock))
        self.parts = parts
        await orphans(database, parts, settings.node, self.clock())
        beat, worker_ = parts.heartbeat, parts.engine.worker
        runner = listener.Runner(parts.app, settings.listen)
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            async with asyncio.TaskGroup() as tg:
                # The worker stops taking work at the signal itself: its grace runs while the
                # listener drains, not after it (a keep-alive client can hold that for seconds).
                for name, coro, until in (
                        ("ingest", parts.ingest.run(halt), halt),
                        # This node's row exists before its worker claims anything: other
                        # nodes judge its runs by it (engine.nodes).
                        ("worker", _after(beat.first_beat, lambda: worker_.run(
                            self.stop, grace=settings.shutdown_grace)), self.stop),
                        ("scheduler", parts.scheduler.run(halt), halt),
                        ("monitors", parts.monitors.run(halt), halt),
                        ("alerts", parts.monitors.run_alerts(halt), halt),
                        ("heartbeat", beat.run(halt), halt),
                        *([("leader", parts.leader.run(halt), halt)] if parts.leader else [])):
                    components[name] = tg.create_task(_supervise(name, coro, until), name=name)
                # /health answers 200 from the first request on, and READY=1 implies it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(beat.first_beat.wait(), timeout=5.0)
                await runner.setup()
                site = web.TCPSite(runner, settings.listen.host, settings.listen.port)
                try:
                    await site.start()
                except OSError as exc:
                    raise errors.RunnerdError(
                        f"cannot listen on {settings.listen.host}:{settings.listen.port}: "
                        f"{exc.strerror}") from exc
                logger.info("runnerd listening on http://%s:%d/ with %d task(s)",
                            settings.listen.host, settings.listen.port, len(reg.tasks),
                            extra={"action": "ready"})
                self.notifier.send("READY=1")
                _settle_memory()
                gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
                await self.stop.wait()
                self.notifier.send("STOPPING=1")
                logger.info("stopping", extra={"action": "stopping"})
                await runner.cleanup()
                halt.set()
        except BaseExceptionGroup as group:
            # The TaskGroup wraps what its body raised (e.g. the port is taken): the CLI shows
            # a RunnerdError as one line, so hand it over unwrapped.
            first = _first(group, errors.RunnerdError)
            if first is None:
                raise
            raise first from None
        finally:
            self._remove_signals(loop)
            await runner.cleanup()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, loop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _on_stop_signal(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        # Only a flag; the second signal gets the default action (forced exit).
        loop.remove_signal_handler(sig)
        self.stop.set()

    def reload(self) -> bool:
        """Re-read the configuration; keep the old one if the new file is invalid."""
        parts = self.parts
        if parts is None:
            return False
        self.notifier.send("RELOADING=1")
        try:
            new = load(self.path, self.environ)
        except errors.ConfigError as exc:
            for problem in exc.problems:
                logger.error("reload rejected: %s", problem, extra={"action": "reload_rejected"})
            self.notifier.send("READY=1")
            return False
        changed = restart_only_changes(parts.config.settings, new.settings)
        if changed:
            logger.warning("%s changed: that needs a restart; the rest is reloaded",
                           ", ".join(changed), extra={"action": "reload_partial"})
        new.first_seen.update(parts.config.registry.first_seen)  # until the write below
        parts.config.swap(new)
        if self.database is not None:
            writing = asyncio.get_running_loop().create_task(self._remember(new))
            self._remembering.add(writing)
            writing.add_done_callback(self._remembering.discard)
        _settle_memory()
        logger.info("configuration reloaded: %d task(s)", len(new.tasks),
                    extra={"action": "reloaded"})
        self.notifier.send("READY=1")
        parts.engine.wake()
        return True


    async def _remember(self, reg: registry.Registry) -> None:
        """The reload's half that needs the database: the new tasks' first sightings."""
        assert self.database is not None
        try:
            await remember_tasks(self.database, reg, self.clock())
        except errors.DatabaseError as exc:
            logger.error("cannot record the tasks first seen (task.created_at stays nil for "
                         "new tasks until the next reload): %s", exc,
                         extra={"action": "reload_partial"})


def run(path: str, environ: Mapping[str, str]) -> int:
    """Run the daemon to completion; return the exit code."""
    return asyncio.run(Daemon(path, environ).run())
