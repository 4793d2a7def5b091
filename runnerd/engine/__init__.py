"""The engine: what each kind of run does, and when and where it is done.

One path per run kind, in run_kinds.py:

- an **event run** is `Handlers.route`: the event's task runs (a lookup in memory). It is never
  claimed: it runs on the database thread inside a transaction that stores its result.
- a **task run** is `Handlers.task_run`: render the task, validate its actions, make the
  action runs. The worker renders due task runs between its transactions, without a slot, by a
  plain call (a render has nothing to await; `limits.render_seconds` bounds it).
- an **action run** is `Handlers.action_run` (awaited, in a worker slot) or, for an in-process
  executor (cache, event, echo), `Handlers.action_run_now`: the same preparation and outcome,
  with the executor's synchronous `perform_now`.

The fast paths call that same code earlier; all are chosen here, in the engine:

1. a webhook batch's events are routed in the transaction that stores them
   (`paths.Engine.store_events`, the ingest's transaction function);
2. the task runs that batch made due are handed to the worker once committed
   (`paths.Engine.events_stored` → `Worker.offer`), so it renders them without fetching them
   (they are stored leased to this node: no other node sharing the database renders them);
   while the worker is behind and would refuse them (`Worker.takes_offers`), they are stored
   due instead, for its fetches (or any node's) to take in order;
3. a task run's in-process action runs are performed in the transaction that finishes the task
   run (`runs.Outcome.perform_inline` = `Handlers.action_run_now`).

Every other event (the CLI, the API, the scheduler, the monitors, follow-up events) is stored
with its event run due, and the worker routes it in its next turn (`runs.route_due`); every
other action run is claimed by the worker. The queue (runnerd/queue/) and the store
(runnerd/store/) never import the engine: the engine passes its functions in.
"""
