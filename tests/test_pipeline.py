"""The pipeline in one process with an injected clock: event run → task runs → action runs.

Everything is real (SQLite file, Liquid, executors); only time is moved by hand.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runnerd import actions, daemon, models
from runnerd.actions import cache as cache_action
from runnerd.actions import echo, event, http
from runnerd.engine import worker
from runnerd.monitoring import sd_notify
from runnerd.queue import runs
from runnerd.store import backends, db
from runnerd.store import cache as cache_store
from runnerd.tasks import registry

from .conftest import Clock, free_port


class Pipeline:
    """The daemon's parts as `daemon.build` wires them, on a real database, without the
    listener: the test drives the worker (and the ingest) itself."""

    def __init__(self, tmp_path: Path, clock: Clock, body: str, url: str | None = None) -> None:
        self.path = tmp_path / "c.yaml"
        self.path.write_text(f"database: {url or tmp_path / 'p.db'}\nconcurrency: 4\n"
                             + textwrap.dedent(body))
        self.first = daemon.load(str(self.path), {})
        self.clock = clock
        #: the order events were stored in (PostgreSQL has no rowid; events are never updated)
        self.stored_order = "rowid" if url is None else "ctid"

    @property
    def reg(self) -> registry.Registry:
        """The configuration in force."""
        return self.parts.config.registry

    @reg.setter
    def reg(self, new: registry.Registry) -> None:
        self.parts.config.swap(new)  # what a reload does

    async def open(self) -> Pipeline:
        settings = self.first.settings
        self.db = await backends.open_database(settings.database, settings.database_url).open()
        await self.db.migrate()
        self.reader = self.db.sync_reader()
        self.session = aiohttp.ClientSession()
        self.executors = actions.Registry()
        for ex in (cache_action.CacheExecutor(), echo.EchoExecutor(), event.EventExecutor(),
                   http.HttpExecutor(self.session, self.first.settings.http)):
            self.executors.add(ex)
        self.parts = daemon.build(self.first, self.db, self.executors, self.reader,
                                  clock=self.clock, notifier=sd_notify.Notifier(None), environ={})
        self.handlers = self.parts.engine.kinds
        self.worker = self.parts.engine.worker
        return self

    async def close(self) -> None:
        await self.session.close()
        self.reader.close()
        await self.db.close()

    async def send(self, topic: str, data: Any = None, **kw: Any) -> models.Event:
        e = runs.new_event(topic, data, "cli", self.clock(), **kw)
        await self.db.write(lambda tx: runs.insert_events(tx, [e], self.clock()))
        return e

    async def drain(self) -> int:
        return await self.worker.run_until_idle()

    async def runs(self, **kw: Any) -> list[models.Run]:
        return list(reversed(await self.db.read(lambda tx: runs.select(tx, limit=1000, **kw))))

    async def events(self, topic: str | None = None) -> list[models.Event]:
        rows = await self.db.read(lambda tx: tx.conn.execute(
            f"SELECT * FROM events ORDER BY {self.stored_order}").fetchall())
        found = [models.Event.from_row(r) for r in rows]
        return [e for e in found if topic is None or e.topic == topic]

    async def cache(self, key: str) -> Any:
        return await self.db.read(lambda tx: cache_store.get(tx, key, self.clock()))


@pytest.fixture(params=["sqlite", "postgres"])
async def pipeline(request: pytest.FixtureRequest, tmp_path: Path,
                   clock: Clock) -> AsyncIterator[Callable[[str], Any]]:
    """A `Pipeline` maker, on a SQLite file and again on a fresh PostgreSQL database (whose
    transactions run in pipeline mode: the same answers with fewer round trips)."""
    made: list[Pipeline] = []
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None

    async def make(body: str) -> Pipeline:
        p = await Pipeline(tmp_path, clock, body, url).open()
        made.append(p)
        return p

    yield make
    for p in made:
        await p.close()


async def test_event_to_task_to_cache_action(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Counter
            subscriptions: user/orders/ready
            code: |
              {% action "cache", "incrby", "orders", event.data.n %}
              {% log "counted", event.data.n %}
    """)
    await p.send("user/orders/ready", {"n": 3})
    await p.send("user/orders/ready", {"n": 4})
    assert await p.drain() == 6
    assert await p.cache("orders") == 7
    all_runs = await p.runs()
    assert {(r.kind.value, r.state.value) for r in all_runs} == {
        ("event", "succeeded"), ("task", "succeeded"), ("action", "succeeded")}
    action = next(r for r in all_runs if r.kind is models.RunKind.ACTION)
    assert action.options == ["incrby", "orders", 3] and action.task_name == "Counter"
    assert action.attempts == 1


async def test_error_tag_fails_the_task_run_and_cancels_every_action(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Fails
            subscriptions: user/a/b
            code: |
              {% action "cache", "set", "k", 1 %}
              {% error "no good" %}
              {% action "echo", "after" %}
    """)
    await p.send("user/a/b")
    await p.drain()
    task = (await p.runs(kind="task"))[0]
    assert task.state is models.RunState.FAILED and task.error == "no good"
    assert await p.runs(kind="action") == []
    assert await p.cache("k") is None
    errors_ = await p.events("mechanic/errors/task")
    assert len(errors_) == 1 and errors_[0].data["message"] == "no good"


async def test_invalid_action_fails_the_task_run(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Bad
            subscriptions: user/a/b
            code: |
              {% action "cache", "set", "ok", 1 %}
              {% action "cache", "set", "bad key!", 1 %}
    """)
    await p.send("user/a/b")
    await p.drain()
    task = (await p.runs(kind="task"))[0]
    assert task.state is models.RunState.FAILED and "bad key" in (task.error or "")
    assert await p.runs(kind="action") == []


async def test_offsets_delay_the_task_run(pipeline, clock: Clock) -> None:
    p = await pipeline("""
        tasks:
          - name: Later
            subscriptions: user/a/b+2.hours
            code: '{% action "echo", "late" %}'
    """)
    start = clock()
    await p.send("user/a/b")
    await p.drain()
    task = (await p.runs(kind="task"))[0]
    assert task.state is models.RunState.SCHEDULED and task.run_at == start + 7200
    clock.advance(7199)
    await p.drain()
    assert (await p.runs(kind="task"))[0].state is models.RunState.SCHEDULED
    clock.advance(1)
    await p.drain()
    assert [r.state.value for r in await p.runs()] == ["succeeded"] * 3


async def test_transient_failure_is_retried_with_backoff(pipeline, clock: Clock) -> None:
    port = free_port()  # nothing listens: connection refused, a transient failure
    p = await pipeline(f"""
        tasks:
          - name: Caller
            subscriptions: user/a/b
            code: |
              {{% action "http", method: "get", url: "http://127.0.0.1:{port}/" %}}
    """)
    await p.send("user/a/b")
    await p.drain()
    waits = []
    for _ in range(4):
        action = (await p.runs(kind="action"))[0]
        assert action.state is models.RunState.SCHEDULED
        waits.append(action.run_at - clock())
        clock.now = action.run_at
        await p.drain()
    action = (await p.runs(kind="action"))[0]
    assert action.state is models.RunState.FAILED and action.attempts == 5
    for got, base in zip(waits, runs.BACKOFF, strict=True):
        assert base * 0.9 <= got <= base * 1.1
    assert len(await p.events("mechanic/errors/action")) == 1


async def test_error_routing(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Broken
            subscriptions: user/a/b
            code: '{% error "broken" %}'
          - name: Also broken
            subscriptions: |
              user/c/d
              mechanic/errors/task
            code: |
              {% if event.topic == "mechanic/errors/task" %}
                {% action "cache", "set", "own_error", error.task.name %}
              {% else %}
                {% error "also broken" %}
              {% endif %}
          - name: Reporter
            subscriptions: mechanic/errors/task
            code: |
              {% action "cache", "incr", "reported" %}
              {% error "the reporter fails too" %}
    """)
    await p.send("user/a/b")
    await p.send("user/c/d")
    await p.drain()
    # the reporter saw both errors; "Also broken" only its own; the reporter's own failures
    # raised no further error event
    reporter = [r for r in await p.runs(kind="task") if r.task_name == "Reporter"]
    assert len(reporter) == 2
    assert await p.cache("own_error") == "Also broken"
    assert len(await p.events("mechanic/errors/task")) == 2


async def test_actions_perform_goes_to_the_originating_task_only(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Doer
            subscriptions: |
              user/a/b
              mechanic/actions/perform
            code: |
              {% if event.topic == "mechanic/actions/perform" %}
                {% action "cache", "set", "seen", action, __perform_event: false %}
              {% else %}
                {% action "cache", "set", "first", 1, __meta: "m" %}
                {% action "cache", "set", "quiet", 1, __perform_event: false %}
                {% action "echo", "never performs" %}
              {% endif %}
          - name: Bystander
            subscriptions: mechanic/actions/perform
            code: '{% action "cache", "set", "bystander", 1 %}'
    """)
    await p.send("user/a/b")
    await p.drain()
    performs = await p.events("mechanic/actions/perform")
    assert len(performs) == 1  # not for "quiet", not for echo, not for the follow-up's action
    assert (await p.cache("seen"))["options"] == ["set", "first", 1]
    assert performs[0].data["type"] == "cache" and performs[0].data["meta"] == "m"
    assert performs[0].data["run"]["ok"] is True and performs[0].data["run"]["result"] == 1
    run = performs[0].data["run"]  # Mechanic's action object: platform/liquid/objects/action.md
    assert set(run) >= {"id", "ok", "error", "result", "result_meta", "attempts", "enqueued_at",
                        "started_at", "stopped_at", "elapsed_time_ms"}
    assert run["result_meta"] == {} and run["attempts"] == 1 and run["elapsed_time_ms"] >= 0
    assert run["enqueued_at"] <= run["started_at"] <= run["stopped_at"]
    assert await p.cache("bystander") is None


async def test_event_action_creates_a_child_event_at_run_at(pipeline, clock: Clock) -> None:
    p = await pipeline("""
        tasks:
          - name: Chain
            subscriptions: |
              user/step/one
              user/step/two
            code: |
              {% if event.topic == "user/step/one" %}
                {% action "event", topic: "user/step/two", data: 2, run_at: event.data %}
              {% else %}
                {% action "cache", "set", "parent_topic", event.parent.topic %}
              {% endif %}
    """)
    await p.send("user/step/one", clock() + 60)
    await p.drain()
    two = await p.events("user/step/two")
    assert len(two) == 1 and two[0].parent_id is not None
    assert await p.cache("parent_topic") is None
    clock.advance(60)
    await p.drain()
    assert await p.cache("parent_topic") == "user/step/one"


async def test_disabled_and_removed_tasks_fail_their_runs(pipeline, tmp_path: Path) -> None:
    p = await pipeline("""
        tasks:
          - name: T
            subscriptions: user/a/b+1.minute
            code: '{% action "echo", 1 %}'
    """)
    await p.send("user/a/b")
    await p.drain()
    p.path.write_text(p.path.read_text().replace("- name: T", "- name: T\n    enabled: false"))
    p.reg = daemon.load(str(p.path), {})
    p.clock.advance(60)
    await p.drain()
    task = (await p.runs(kind="task"))[0]
    assert task.state is models.RunState.FAILED and task.error == "task 'T' is disabled"


async def test_task_and_trigger_variables(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Vars
            subscriptions: mechanic/user/text
            options: {greeting: hello}
            code: |
              {% assign lines = event.data | split: newline %}
              {% action "cache", "set", "out", options.greeting | append: " " | append: lines[1] %}
              {% action "cache", "set", "task", task.name %}
    """)
    task_id = p.reg.tasks["Vars"].id
    await p.send("mechanic/user/text", "a\nb", task_ids=[task_id])
    await p.drain()
    assert await p.cache("out") == "hello b"
    assert await p.cache("task") == "Vars"


async def test_the_daemon_routes_events_in_the_storing_transaction(pipeline, clock) -> None:
    import asyncio

    p = await pipeline("""
        tasks:
          - name: Now
            subscriptions: user/orders/ready
            code: '{% action "echo", n: event.data.n %}'
          - name: Later
            subscriptions: user/orders/ready+1.hour
            code: '{% action "echo", later: true %}'
    """)
    stop = asyncio.Event()
    ingesting = asyncio.create_task(p.parts.ingest.run(stop))
    e = runs.new_event("user/orders/ready", {"n": 1}, "webhook", clock())
    future = runs.new_event("user/orders/ready", {"n": 2}, "webhook", clock(),
                            run_at=clock() + 60)
    try:
        for each in (e, future):
            await p.parts.ingest.submit(each)
    finally:
        stop.set()
        await ingesting
    # Routed at once: the event run is already succeeded, its task runs wait beside it.
    stored = {(r.event_id, r.kind.value, r.task_name): r for r in await p.runs()}
    event_run = stored[(e.id, "event", None)]
    assert (event_run.state, event_run.result, event_run.attempts) == (
        "succeeded", {"tasks": ["Now", "Later"]}, 1)
    assert stored[(e.id, "task", "Now")].state == "due"
    assert stored[(e.id, "task", "Later")].state == "scheduled"
    # An event for later is routed by the worker when it comes due, with the registry of then.
    assert stored[(future.id, "event", None)].state == "scheduled"
    assert p.parts.metrics._routed == 1
    # A transaction that fails stores nothing and counts nothing.
    bad = runs.new_event("user/orders/ready", {"n": 3}, "webhook", clock())

    def fail(tx: db.Tx) -> None:
        p.parts.engine.store_events(tx, [bad], clock())
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await p.db.write(fail)
    assert p.parts.metrics._routed == 1 and len(await p.runs()) == len(stored)
    assert len(stored) == 4
    assert await p.drain() == 2  # the Now task run and its echo action
    clock.advance(3600)
    # The first event's Later task and its echo; the second event's event run, its Now task
    # and that echo (its own Later task is now an hour away).
    assert await p.drain() == 5


async def test_loop_protection_fails_a_run_identical_to_its_predecessor(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Echo chamber
            subscriptions: |
              user/loop/ping
            code: |
              {% action "event", topic: "user/loop/ping", data: "same" %}
          - name: Pager
            subscriptions: |
              user/pages/next
            code: |
              {% assign page = event.data | default: 1 %}
              {% if page < 5 %}
                {% action "event", topic: "user/pages/next", data: page | plus: 1 %}
              {% endif %}
          - name: Perform loop
            subscriptions: |
              user/perform/start
              mechanic/actions/perform
            code: |
              {% action "cache", "set", "perform-loop", 1 %}
    """)
    await p.send("user/loop/ping", "same")
    await p.send("user/pages/next", 1)
    await p.send("user/perform/start")
    await p.drain()
    tasks = await p.runs(kind="task")

    def of(name: str) -> list[tuple[str, str | None]]:
        return [(r.state.value, r.error) for r in tasks if r.task_name == name]

    from runnerd.engine.run_kinds import LOOP_ERROR

    # Its first run emits the event; the second would emit the very same one: failed, ended.
    assert of("Echo chamber") == [("succeeded", None), ("failed", LOOP_ERROR)]
    # Different actions each generation (a cursor moving on): not a loop.
    assert [s for s, _ in of("Pager")] == ["succeeded"] * 5
    # mechanic/actions/perform answered with the same action again: failed at the second run.
    assert of("Perform loop") == [("succeeded", None), ("failed", LOOP_ERROR)]
    assert len([r for r in await p.runs(kind="action") if r.task_name == "Perform loop"]) == 1


def no_tasks(tx: db.Tx, event: models.Event,
             now: float) -> tuple[list[str], list[dict[str, Any]]]:
    """A `runs.Route` for workers built by hand: no task subscribes."""
    return [], []


def no_render(job: runs.Job) -> runs.Outcome:
    raise AssertionError(f"no task run was expected: {job.run}")


async def no_action(job: runs.Job) -> runs.Outcome:
    raise AssertionError(f"no action run was expected: {job.run}")


async def test_concurrency_caps_the_runs_started_at_once(tmp_path: Path, clock) -> None:
    import asyncio

    database = await db.Database(tmp_path / "cap.db").open()
    await database.migrate()
    release = asyncio.Event()
    performing: list[int] = []

    async def slow(job: runs.Job) -> runs.Outcome:
        performing.append(job.run.id)
        await release.wait()
        return runs.Outcome(job.run, ok=True, finished_at=clock())

    w = worker.Worker(database, worker.Kinds(render=no_render, perform=slow), no_tasks,
                      concurrency=2, clock=clock, lane=None)
    events = [runs.new_event("user/cap/test", i, "cli", clock()) for i in range(5)]
    await database.write(lambda tx: runs.insert_events(tx, events, clock()))
    await database.write(lambda tx: tx.executemany("insert_run", [
        runs.run_row(models.RunKind.ACTION, e.id, clock(), task_name="t", action_type="echo",
                     options={}) for e in events]))
    stop = asyncio.Event()
    loop_task = asyncio.create_task(w.run(stop, grace=5))

    async def count(state: str) -> int:
        return (await database.read(lambda tx: tx.conn.execute(
            "SELECT COUNT(*) FROM runs WHERE state = ? AND kind = 'action'",
            (state,)).fetchone()))[0]

    try:
        async with asyncio.timeout(10):
            while len(performing) < 2:
                await asyncio.sleep(0.01)
        for _ in range(20):  # the worker polls and is woken meanwhile: no third run may start
            await asyncio.sleep(w.poll / 10)
            assert len(performing) == 2 and w.active == 2 and await count("started") == 2
        release.set()
        async with asyncio.timeout(10):
            while await count("succeeded") < 5:
                await asyncio.sleep(0.01)
    finally:
        release.set()
        stop.set()
        await loop_task
        await database.close()


async def test_task_runs_take_no_slot_and_go_from_due_to_final(tmp_path: Path, clock,
                                                                monkeypatch) -> None:
    import asyncio

    database = await db.Database(tmp_path / "renders.db").open()
    await database.migrate()
    release = asyncio.Event()
    seen: list[tuple[int, str, int]] = []  # (run id, its state in the file, worker.active)

    async def slow_action(job: runs.Job) -> runs.Outcome:
        await release.wait()
        return runs.Outcome(job.run, ok=True, finished_at=clock())

    reader = database.sync_reader()

    def render(job: runs.Job) -> runs.Outcome:
        row = reader.conn.execute("SELECT state FROM runs WHERE id = ?",
                                  (job.run.id,)).fetchone()
        seen.append((job.run.id, row["state"], w.active))
        return runs.Outcome(job.run, ok=True, finished_at=clock())

    w = worker.Worker(database, worker.Kinds(render=render, perform=slow_action), no_tasks,
                      concurrency=1, clock=clock, lane=None)
    batches: list[list[str]] = []
    w.on_finished = lambda outcomes: batches.append([o.run.kind.value for o in outcomes])
    monkeypatch.setattr(worker, "RENDER_BATCH_SECONDS", 0.0)  # one render per turn
    event = runs.new_event("user/slots/test", None, "cli", clock())
    await database.write(lambda tx: runs.insert_events(tx, [event], clock()))
    await database.write(lambda tx: tx.executemany("insert_run", [
        runs.run_row(models.RunKind.ACTION, event.id, clock(), task_name="t",
                     action_type="http", options={}),
        *[runs.run_row(models.RunKind.TASK, event.id, clock(), task_name=f"t{i}")
          for i in range(3)]]))
    await database.write(lambda tx: tx.conn.execute("UPDATE runs SET state = 'succeeded' "
                                                    "WHERE kind = 'event'"))
    stop = asyncio.Event()
    loop_task = asyncio.create_task(w.run(stop, grace=5))

    async def states(kind: str) -> list[tuple[str, int, bool]]:
        return [tuple(r) for r in await database.read(lambda tx: tx.conn.execute(
            "SELECT state, attempts, started_at IS NOT NULL FROM runs WHERE kind = ? "
            "ORDER BY id", (kind,)).fetchall())]

    try:
        # The only slot holds the action run; the task runs are rendered all the same, each
        # while still `due` in the file, and recorded in the turn after its render.
        async with asyncio.timeout(10):
            while await states("task") != [("succeeded", 1, True)] * 3:
                await asyncio.sleep(0.01)
        assert [(state, active) for _, state, active in seen] == [("due", 1)] * 3
        assert await states("action") == [("started", 1, True)]
        # The time budget of a batch was spent after each render: one render per turn.
        assert [b.count("task") for b in batches if "task" in b] == [1, 1, 1]
        release.set()
        async with asyncio.timeout(10):
            while await states("action") != [("succeeded", 1, True)]:
                await asyncio.sleep(0.01)
    finally:
        release.set()
        stop.set()
        await loop_task
        reader.close()
        await database.close()


async def test_event_runs_coming_due_are_routed_while_actions_hold_every_slot(pipeline,
                                                                            clock) -> None:
    """An event run that comes due is routed in the worker's transaction: an action run
    holding the only slot holds up neither it nor its task run."""
    import asyncio

    p = await pipeline("""
        tasks:
          - name: Call
            subscriptions: user/slow/call
            code: '{% action "http", method: "get", url: "http://127.0.0.1:9/never" %}'
          - name: Keep
            subscriptions: user/orders/ready
            code: '{% action "cache", "set", event.data.key, event.data.n %}'
    """)
    release = asyncio.Event()

    async def slow_action(job: runs.Job) -> runs.Outcome:
        await release.wait()
        return runs.Outcome(job.run, ok=True, finished_at=clock())

    w = worker.Worker(p.db, worker.Kinds(render=p.handlers.task_run, perform=slow_action),
                      p.handlers.route, concurrency=1, clock=clock, lane=None)
    later = [await p.send("user/orders/ready", {"key": f"k{n}", "n": n}, run_at=clock() + 60)
             for n in range(3)]
    await p.send("user/slow/call")
    stop = asyncio.Event()
    loop_task = asyncio.create_task(w.run(stop, grace=5))
    try:
        async with asyncio.timeout(10):
            while w.active < 1:
                await asyncio.sleep(0.01)
        clock.advance(60)  # the events' time comes while the http run holds the only slot
        w.wakeup.set()
        async with asyncio.timeout(10):
            while [await p.cache(f"k{n}") for n in range(3)] != [0, 1, 2]:
                await asyncio.sleep(0.01)
        assert w.active == 1 and not release.is_set()  # the http run still holds the slot
    finally:
        release.set()
        stop.set()
        await loop_task
    assert w.routed == 4  # the three, and the event of the http run
    routed = {r.event_id: r for r in await p.runs(kind="event")}
    assert [(routed[e.id].state.value, routed[e.id].attempts, routed[e.id].result)
            for e in later] == [("succeeded", 1, {"tasks": ["Keep"]})] * 3
    assert [r.state.value for r in await p.runs(kind="action")] == ["succeeded"] * 4


#: A task that keeps each event's `n` under its `key` (a cache action, performed in place).
KEEP = """
    tasks:
      - name: Keep
        subscriptions: user/orders/ready
        code: '{% action "cache", "set", event.data.key, event.data.n %}'
"""


async def test_task_runs_stored_by_the_ingest_are_rendered_as_handed_over(pipeline,
                                                                         clock) -> None:
    import asyncio

    p = await pipeline(KEEP)
    ing = p.parts.ingest
    assert await p.drain() == 0  # a worker takes offers once a fetch found nothing older
    stop = asyncio.Event()
    loops = [asyncio.create_task(ing.run(stop)), asyncio.create_task(p.worker.run(stop, grace=5))]
    try:
        for n in (1, 2, 3):
            await ing.submit(runs.new_event("user/orders/ready", {"key": f"k{n}", "n": n},
                                            "webhook", clock()))
            async with asyncio.timeout(10):
                while await p.cache(f"k{n}") is None:
                    await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*loops)
    # Each rendered from the ingest's hand-over, none from a turn's fetch.
    assert (p.worker.rendered, p.worker.handed_over) == (3, 3)
    tasks = await p.runs(kind="task")
    assert [(t.state.value, t.attempts) for t in tasks] == [("succeeded", 1)] * 3
    actions = await p.runs(kind="action")
    assert [(a.state.value, a.task_run_id) for a in actions] == [
        ("succeeded", t.id) for t in tasks]
    assert p.parts.metrics._routed == 3


async def test_while_the_worker_is_behind_the_ingest_hands_nothing_over(pipeline) -> None:
    """A worker that would refuse offers (behind: older due task runs wait) is handed no jobs:
    the ingest stores the task runs due and unleased, for fetches to take in order (on
    PostgreSQL any node may take them); once it takes offers again, they are leased jobs."""
    p = await pipeline(KEEP)
    engine = p.parts.engine

    async def store(n: int) -> runs.Stored:
        event = runs.new_event("user/orders/ready", {"key": f"k{n}", "n": n}, "webhook",
                               p.clock())
        return await p.db.write(lambda tx: engine.store_events(tx, [event], p.clock()))

    assert not p.worker.takes_offers  # behind until a fetch found nothing older
    behind = await store(1)
    assert (behind.jobs, behind.routed) == ([], 1)
    [waiting] = await p.runs(kind="task")
    leases = await p.db.read(lambda tx: tx.all("run_by_id", {"id": waiting.id}))
    assert (waiting.state.value, leases[0]["node"], leases[0]["lease_until"]) == (
        "due", None, None)
    assert await p.drain() == 2  # the fetch renders it (and its cache action is performed)
    assert p.worker.takes_offers and await p.cache("k1") == 1
    caught_up = await store(2)
    [job] = caught_up.jobs
    leased = await p.db.read(lambda tx: tx.one("run_by_id", {"id": job.run.id}))
    assert leased is not None and leased["node"] == engine.node
    assert leased["lease_until"] is not None


async def test_a_task_run_offered_while_it_renders_is_rendered_once(tmp_path: Path, clock,
                                                                    caplog) -> None:
    """The ingest's offer and a turn's fetch may both bring a task run: it renders once."""

    database = await db.Database(tmp_path / "once.db").open()
    await database.migrate()
    renders: list[int] = []
    stored: list[runs.Job] = []

    def render(job: runs.Job) -> runs.Outcome:
        renders.append(job.run.id)
        w.offer(stored)  # the same run, handed over while the fetched copy renders
        return runs.Outcome(job.run, ok=True, finished_at=clock())

    def route(tx: db.Tx, event: models.Event,
              now: float) -> tuple[list[str], list[dict[str, Any]]]:
        return ["t"], [runs.run_row(models.RunKind.TASK, event.id, now, task_name="t")]

    w = worker.Worker(database, worker.Kinds(render=render, perform=no_action), route,
                      concurrency=2, clock=clock, lane=None)
    try:
        assert await w.run_until_idle() == 0  # caught up: offers are taken from now on
        event = runs.new_event("user/once/test", None, "webhook", clock())
        stored.extend((await database.write(
            lambda tx: runs.insert_events(tx, [event], clock(), route))).jobs)
        assert len(stored) == 1 and stored[0].run.state is models.RunState.DUE
        assert await w.run_until_idle() == 1  # fetched (no offer yet), offered while rendering
        rows = await database.read(lambda tx: tx.conn.execute(
            "SELECT state, attempts FROM runs WHERE kind = 'task'").fetchall())
    finally:
        await database.close()
    assert renders == [stored[0].run.id]
    assert [tuple(r) for r in rows] == [("succeeded", 1)]
    assert "stale_finish" not in caplog.text and "no longer" not in caplog.text


async def test_offers_wait_behind_older_due_task_runs(tmp_path: Path, clock,
                                                      monkeypatch) -> None:
    """While a fetch leaves due task runs behind, new ones are not rendered first: the queue
    stays oldest first."""
    database = await db.Database(tmp_path / "order.db").open()
    await database.migrate()
    order: list[int] = []

    def render(job: runs.Job) -> runs.Outcome:
        order.append(job.run.id)
        return runs.Outcome(job.run, ok=True, finished_at=clock())

    w = worker.Worker(database, worker.Kinds(render=render, perform=no_action), no_tasks,
                      concurrency=2, clock=clock, lane=None)
    monkeypatch.setattr(worker, "RENDER_BATCH", 2)
    event = runs.new_event("user/order/test", None, "cli", clock())
    await database.write(lambda tx: runs.insert_events(tx, [event], clock()))
    await database.write(lambda tx: tx.conn.execute(
        "UPDATE runs SET state = 'succeeded' WHERE kind = 'event'"))

    def add_task_run(tx: db.Tx) -> runs.Job:
        row = runs.run_row(models.RunKind.TASK, event.id, clock(), task_name="t")
        row = {**row, "error": None, "id": tx.execute("insert_run", row).lastrowid}
        return runs.Job(models.Run.from_row(row), event)

    try:
        older = [await database.write(add_task_run) for _ in range(3)]
        assert await w._turn(claim=True) == 0  # fetched a full batch (2 of 3): behind
        newer = await database.write(add_task_run)
        w.offer([newer])  # refused: the third older run waits
        assert await w.run_until_idle() == 2
        assert order == [j.run.id for j in [*older, newer]]
        assert w.handed_over == 0
        # Caught up now: the next offer is taken and rendered without a fetch.
        latest = await database.write(add_task_run)
        w.offer([latest])
        assert await w.run_until_idle() == 1
        assert order[-1] == latest.run.id and w.handed_over == 1
    finally:
        await database.close()


async def test_a_render_that_crashes_fails_its_task_run_and_the_worker_goes_on(
        tmp_path: Path, clock, caplog) -> None:
    """A bug in the renderer (not a template error) fails that task run with its exception;
    the next task run renders as usual."""
    database = await db.Database(tmp_path / "crash.db").open()
    await database.migrate()
    event = runs.new_event("user/crash/test", None, "cli", clock())
    await database.write(lambda tx: runs.insert_events(tx, [event], clock()))
    await database.write(lambda tx: tx.executemany("insert_run", [
        runs.run_row(models.RunKind.TASK, event.id, clock(), task_name=name)
        for name in ("boom", "fine")]))
    await database.write(lambda tx: tx.conn.execute(
        "UPDATE runs SET state = 'succeeded' WHERE kind = 'event'"))

    def render(job: runs.Job) -> runs.Outcome:
        if job.run.task_name == "boom":
            raise KeyError("a bug")
        return runs.Outcome(job.run, ok=True, finished_at=clock())

    w = worker.Worker(database, worker.Kinds(render=render, perform=no_action), no_tasks,
                      concurrency=2, clock=clock, lane=None)
    try:
        assert await w.run_until_idle() == 2
        rows = await database.read(lambda tx: tx.conn.execute(
            "SELECT task_name, state, error FROM runs WHERE kind = 'task' ORDER BY id").fetchall())
    finally:
        await database.close()
    assert [tuple(r) for r in rows] == [("boom", "failed", "internal error: KeyError('a bug')"),
                                        ("fine", "succeeded", None)]
    assert "crashed" in caplog.text


async def test_removed_tasks_fail_their_waiting_runs_and_retry_uses_current_code(
        pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: T
            subscriptions: user/a/b+1.minute
            code: '{% action "echo", 1 %}'
          - name: U
            subscriptions: user/c/d
            code: '{% action "echo", version: 1 %}{% error "not yet" %}'
    """)
    await p.send("user/a/b")
    await p.send("user/c/d")
    await p.drain()
    failed_u = next(r for r in await p.runs(kind="task") if r.task_name == "U")
    assert failed_u.state is models.RunState.FAILED
    # T is removed while its task run waits; U's code changes before it is retried by hand.
    database_line = p.path.read_text().splitlines()[0]
    p.path.write_text(database_line + textwrap.dedent("""
        tasks:
          - name: U
            subscriptions: user/c/d
            code: '{% action "echo", version: 2 %}'
    """))
    p.reg = daemon.load(str(p.path), {})
    assert set(p.reg.tasks) == {"U"}
    await p.db.write(lambda tx: runs.retry(tx, failed_u.id, p.clock()))
    p.clock.advance(60)
    await p.drain()
    tasks = {r.task_name: r for r in await p.runs(kind="task")}
    assert tasks["T"].state is models.RunState.FAILED
    assert tasks["T"].error == "task 'T' was removed from the configuration"
    assert tasks["U"].state is models.RunState.SUCCEEDED  # re-rendered with today's code
    actions = [r for r in await p.runs(kind="action") if r.task_name == "U"]
    assert [a.options for a in actions] == [{"version": 2}]


async def _task_turn(p: Pipeline) -> list[runs.Outcome]:
    """Claim and perform the due event and task runs, then finish them in one turn that claims
    nothing: what that turn stored is what finishing a task run stores by itself."""
    import asyncio

    finished: list[runs.Outcome] = []
    p.worker.on_finished = finished.extend
    while await p.worker._turn(claim=True):
        await asyncio.gather(*p.worker._active.values())
        if any(o.run.kind is models.RunKind.TASK for o in p.worker._done):
            break
    await p.worker._turn(claim=False)
    return finished


async def test_in_process_actions_are_performed_with_their_task_run(pipeline) -> None:
    """cache, event and echo action runs are stored already performed by the transaction that
    finishes their task run, in generation order; an http action run is left due."""
    p = await pipeline(f"""
        tasks:
          - name: Mixed
            subscriptions: user/orders/ready
            code: |
              {{% action "cache", "incrby", "orders", event.data.n %}}
              {{% action "http", method: "get", url: "http://127.0.0.1:{free_port()}/" %}}
              {{% action "event", topic: "user/orders/counted", data: event.data.n %}}
              {{% action "echo", "done" %}}
          - name: Listener
            subscriptions: user/orders/counted
            code: "{{% log event.data %}}"
    """)
    await p.send("user/orders/ready", {"n": 5})
    finished = await _task_turn(p)
    assert await p.cache("orders") == 5
    task = (await p.runs(kind="task", task="Mixed"))[0]
    actions_ = await p.runs(kind="action")
    assert [(a.action_type, a.state.value) for a in actions_] == [
        ("cache", "succeeded"), ("http", "due"), ("event", "succeeded"), ("echo", "succeeded")]
    assert [a.id for a in actions_] == sorted(a.id for a in actions_)
    for a in actions_:
        assert a.task_run_id == task.id
        if a.state is models.RunState.SUCCEEDED:
            assert a.attempts == 1 and a.started_at is not None and a.finished_at is not None
    assert actions_[0].result == 5 and actions_[3].result == "done"
    # The event action's event is stored with its event run, which the worker performs next.
    counted = await p.events("user/orders/counted")
    assert len(counted) == 1 and counted[0].parent_id == task.event_id
    assert [r.state.value for r in await p.runs(kind="event")
            if r.event_id == counted[0].id] == ["due"]
    # The worker's on_finished hook (metrics) hears of the three performed in place.
    assert sorted(o.run.action_type for o in finished if o.run.kind is models.RunKind.ACTION) \
        == ["cache", "echo", "event"]


async def test_an_in_process_action_that_fails_fails_alone_with_its_error_event(pipeline) -> None:
    p = await pipeline("""
        tasks:
          - name: Counter
            subscriptions: user/orders/ready
            code: |
              {% action "cache", "set", "orders", "many" %}
              {% action "cache", "incr", "orders" %}
              {% action "echo", __error: "echo says no" %}
          - name: Errors
            subscriptions: mechanic/errors/action
            code: "{% log error.message %}"
    """)
    await p.send("user/orders/ready")
    await _task_turn(p)
    task = (await p.runs(kind="task", task="Counter"))[0]
    assert task.state is models.RunState.SUCCEEDED
    actions_ = await p.runs(kind="action")
    assert [(a.action_type, a.state.value) for a in actions_] == [
        ("cache", "succeeded"), ("cache", "failed"), ("echo", "failed")]
    assert "not an integer" in (actions_[1].error or "")
    assert actions_[2].error == "echo says no"
    assert await p.cache("orders") == "many"  # the failed incr wrote nothing
    errors_ = await p.events("mechanic/errors/action")
    assert sorted(e.data["action"]["run"]["id"] for e in errors_) == [actions_[1].id,
                                                                       actions_[2].id]
    # A failed in-process action run can be retried by hand; the worker performs it then.
    await p.db.write(lambda tx: cache_action.apply(
        tx, "set", {"key": "orders", "value": 1, "ttl": cache_action.cache.MAX_TTL},
        p.clock()))
    await p.db.write(lambda tx: runs.retry(tx, actions_[1].id, p.clock()))
    await p.drain()
    assert await p.cache("orders") == 2
    assert (await p.runs(kind="action"))[1].state is models.RunState.SUCCEEDED
