-- Every statement runnerd runs, by name (`-- name: NAME`), grouped by subject; the line(s) after
-- a name say what the statement does. Executed by name through `store.db.Tx` (and `Reader`).
-- Parameters are :named; times are Unix seconds.
--
-- Run priorities (runs.priority, highest claimed first) are parameters, never literals:
-- :action_priority (3), :task_priority (2) and :event_priority (1), bound from
-- models.PRIORITY by queue/runs.py.

-- Events -------------------------------------------------------------------------------------

-- name: insert_event
-- Store an event (its event run is stored beside it by insert_run).
INSERT INTO events (id, topic, data, source, parent_id, webhook_request_id, task_ids, created_at)
VALUES (:id, :topic, :data, :source, :parent_id, :webhook_request_id, :task_ids, :created_at);

-- name: event_by_id
-- One event by id.
SELECT * FROM events WHERE id = :id;

-- name: events_by_ids
-- The events of a batch of runs; :ids is a JSON array of event ids.
SELECT * FROM events WHERE id IN (SELECT value FROM json_each(:ids));

-- name: event_counts
-- Events created so far, by source (kept by the events_count trigger; never lowered by pruning).
SELECT source, n FROM event_counts ORDER BY source;

-- The run queue: storing, claiming and finishing runs ----------------------------------------

-- name: insert_run
-- Store a run (any kind, any state: due, scheduled, or already performed); :node and
-- :lease_until: the node holding it (a task run stored leased to the ingesting node, a run
-- performed in place), or NULL.
INSERT INTO runs (kind, state, priority, run_at, event_id, task_name, action_type, options, meta,
                  perform_event, task_run_id, created_at, result, attempts, started_at,
                  finished_at, node, lease_until)
VALUES (:kind, :state, :priority, :run_at, :event_id, :task_name, :action_type, :options, :meta,
        :perform_event, :task_run_id, :created_at, :result, :attempts, :started_at,
        :finished_at, :node, :lease_until);

-- name: promote_scheduled
-- Scheduled runs whose time came become due.
UPDATE runs SET state = 'due' WHERE state = 'scheduled' AND run_at <= :now;

-- name: claim_runs
-- Start the due runs that take a worker slot: action runs, then event runs, FIFO within
-- a kind; two ranges of the runs_due index, so a backlog of due task runs is never scanned.
-- :event_limit caps the event runs (0 where the daemon routes them instead: due_event_runs).
-- :node is the claiming node (runs.node).
UPDATE runs SET state = 'started', started_at = :now, attempts = attempts + 1, node = :node
WHERE id IN (SELECT id FROM (
                 SELECT * FROM (SELECT id, priority, run_at FROM runs
                                WHERE state = 'due' AND priority = :action_priority
                                ORDER BY run_at, id LIMIT :limit)
                 UNION ALL
                 SELECT * FROM (SELECT id, priority, run_at FROM runs
                                WHERE state = 'due' AND priority = :event_priority
                                ORDER BY run_at, id LIMIT :event_limit))
             ORDER BY priority DESC, run_at, id LIMIT :limit)
RETURNING *;

-- name: due_task_runs
-- The due task runs the worker renders next, FIFO; they stay due until they are finished. One
-- process renders on SQLite: no lease (PostgreSQL's block leases them to :node until
-- :lease_until, skipping those another node holds).
SELECT * FROM runs WHERE state = 'due' AND priority = :task_priority
ORDER BY run_at, id LIMIT :limit;

-- name: due_event_runs
-- The due event runs the daemon's worker routes in its own transaction, FIFO; no slot taken
-- (PostgreSQL's block locks them, skipping those another node is routing, and sets :node).
SELECT id, event_id, attempts FROM runs WHERE state = 'due' AND priority = :event_priority
ORDER BY run_at, id LIMIT :limit;

-- name: finish_run
-- Move a run to its final state, only if it is still in state :from ('started', or 'due' for
-- a task run rendered or an event run routed without a claim) with the :held attempts it was
-- read with (a run requeued and claimed again has one more); rowcount 0: a stale finish. The
-- lease ends (PostgreSQL's block also requires the run to be held by :node).
UPDATE runs SET state = :state, result = :result, error = :error, finished_at = :now,
                started_at = :started_at, attempts = :attempts, lease_until = NULL
WHERE id = :id AND state = :from AND attempts = :held;

-- name: retry_later
-- Schedule a failed attempt's automatic retry at :run_at, only if still as finish_run requires.
UPDATE runs SET state = 'scheduled', run_at = :run_at, error = :error,
                started_at = :started_at, attempts = :attempts, lease_until = NULL
WHERE id = :id AND state = :from AND attempts = :held;

-- name: insert_attempt
-- Record a retried attempt (the latest attempt is the run row itself).
INSERT INTO run_attempts (run_id, attempt, started_at, finished_at, error)
VALUES (:run_id, :attempt, :started_at, :finished_at, :error)
ON CONFLICT (run_id, attempt) DO UPDATE SET error = excluded.error,
    finished_at = excluded.finished_at;

-- name: defer_run
-- Hand a claimed run back unperformed until :run_at (its target already has its share of
-- the slots); the claim's attempt does not count.
UPDATE runs SET state = 'scheduled', run_at = :run_at, attempts = attempts - 1
WHERE id = :id AND state = 'started';

-- name: interrupted_started
-- Start-up (SQLite): the started runs whose last allowed attempt a crash interrupted; failed
-- one by one (runs.fail_interrupted) before requeue_started requeues the others.
SELECT * FROM runs WHERE state = 'started' AND attempts >= :max_attempts;

-- name: interrupted_node_started
-- Start-up on PostgreSQL: interrupted_started among the runs requeue_node_started requeues.
SELECT * FROM runs
WHERE state = 'started' AND (node = :node OR node IS NULL) AND attempts >= :max_attempts;

-- name: interrupted_lost_runs
-- The leader: interrupted_started among the runs recover_lost_runs requeues.
SELECT * FROM runs
WHERE state = 'started' AND node IS NOT NULL AND node != :node AND attempts >= :max_attempts
  AND NOT EXISTS (SELECT 1 FROM workers
                  WHERE workers.node = runs.node AND workers.stopped_at IS NULL
                    AND workers.heartbeat_at >= :before);

-- name: requeue_started
-- Every started run back to due (start-up: the lock file proves no other process runs them);
-- each interrupted attempt returned for run_attempts (insert_attempt), the error is runs.py's.
UPDATE runs SET state = 'due' WHERE state = 'started'
RETURNING id, attempts, started_at, NULL AS error;

-- name: requeue_node_started
-- Start-up on PostgreSQL: this node's runs left started by its earlier process (the node's
-- advisory lock proves it is gone; its worker has not started yet) back to due, and those
-- started with no node (by a runnerd before nodes: one daemon per database); the attempt
-- counts.
UPDATE runs SET state = 'due', node = NULL, lease_until = NULL,
    error = 'node ' || COALESCE(node, 'unnamed') || ' restarted while the run was started'
WHERE state = 'started' AND (node = :node OR node IS NULL)
RETURNING id, attempts, started_at, error;

-- name: recover_lost_runs
-- The leader: the started runs of nodes other than :node with no process beating since
-- :before (killed, cut off, or stopped without requeueing) back to due; the attempt counts
-- (returned for run_attempts).
-- One guarded statement: a finish that commits first wins, and a late finish of a run
-- requeued here finds it no longer started (finish_run's guard).
UPDATE runs SET state = 'due', node = NULL, lease_until = NULL,
    error = 'node ' || node || ' lost (no heartbeat for ' || :timeout || ' s)'
WHERE state = 'started' AND node IS NOT NULL AND node != :node
  AND NOT EXISTS (SELECT 1 FROM workers
                  WHERE workers.node = runs.node AND workers.stopped_at IS NULL
                    AND workers.heartbeat_at >= :before)
RETURNING id, attempts, started_at, error;

-- name: requeue_run
-- One started run back to due (interrupted by a stop); its attempt counts. Only while this
-- node still holds it: a node counted dead meanwhile may have seen it recovered and started
-- again by another node. The attempt is returned for run_attempts (the error is runs.py's).
UPDATE runs SET state = 'due', node = NULL
WHERE id = :id AND state = 'started' AND (node = :node OR node IS NULL)
RETURNING id, attempts, started_at, NULL AS error;

-- name: predecessor_actions
-- Loop protection: the actions of this task's latest run on the parent event, in order.
SELECT action_type, options FROM runs
WHERE task_run_id = (SELECT id FROM runs WHERE event_id = :parent_id AND kind = 'task'
                       AND task_name = :task_name ORDER BY id DESC LIMIT 1)
ORDER BY id;

-- Runs by hand: the CLI and the API ----------------------------------------------------------

-- name: run_by_id
-- One run by id.
SELECT * FROM runs WHERE id = :id;

-- name: list_runs
-- The newest runs, optionally of one state, kind and task (NULL: any).
SELECT * FROM runs
WHERE (:state IS NULL OR state = :state)
  AND (:kind IS NULL OR kind = :kind)
  AND (:task IS NULL OR task_name = :task)
ORDER BY id DESC LIMIT :limit;

-- name: attempts_of_run
-- A run's retried attempts, in order.
SELECT attempt, started_at, finished_at, error FROM run_attempts WHERE run_id = :id
ORDER BY attempt;

-- name: retry_failed_run
-- A failed task or action run back to due now, as if new (a retry by hand).
UPDATE runs SET state = 'due', run_at = :now, error = NULL, result = NULL,
    started_at = NULL, finished_at = NULL
WHERE id = :id AND state = 'failed' AND kind IN ('task', 'action');

-- name: cancel_run
-- A run that has not started fails with 'cancelled'.
UPDATE runs SET state = 'failed', error = 'cancelled', finished_at = :now
WHERE id = :id AND state IN ('unscheduled', 'scheduled', 'due');

-- The cache ----------------------------------------------------------------------------------

-- name: cache_get
-- The live (unexpired) value under :key, as JSON text.
SELECT value FROM cache WHERE key = :key AND expires_at > :now;

-- name: cache_keys
-- The live keys, in order (at most 10,000).
SELECT key FROM cache WHERE expires_at > :now ORDER BY key LIMIT 10000;

-- name: cache_set
-- Store :value (JSON text) under :key until :expires_at.
INSERT INTO cache (key, value, expires_at) VALUES (:key, :value, :expires_at)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at;

-- name: cache_add
-- Add :increment - :decrement to the integer under :key (0 when absent or expired) and reset
-- its TTL, in one statement; returns the new value, or no row (nothing written) when the
-- stored value is not a canonical 64-bit integer or the sum leaves that range (SQLite's
-- overflowing integer arithmetic gives a REAL).
INSERT INTO cache (key, value, expires_at)
SELECT :key, CAST(0 + :increment - :decrement AS TEXT), :expires_at
WHERE typeof(0 + :increment - :decrement) = 'integer'
   OR EXISTS (SELECT 1 FROM cache WHERE key = :key AND expires_at > :now)  -- a live value
ON CONFLICT (key) DO UPDATE SET
    value = CAST(CASE WHEN cache.expires_at > :now THEN CAST(cache.value AS INTEGER) ELSE 0 END
                 + :increment - :decrement AS TEXT),
    expires_at = excluded.expires_at
WHERE (cache.expires_at <= :now OR CAST(CAST(cache.value AS INTEGER) AS TEXT) = cache.value)
  AND typeof(CASE WHEN cache.expires_at > :now THEN CAST(cache.value AS INTEGER) ELSE 0 END
             + :increment - :decrement) = 'integer'
RETURNING CAST(value AS INTEGER) AS value;

-- name: cache_del
-- Delete :key.
DELETE FROM cache WHERE key = :key;

-- name: cache_purge
-- Delete every expired key.
DELETE FROM cache WHERE expires_at <= :now;

-- The scheduler ------------------------------------------------------------------------------

-- name: insert_slot
-- Record a fired (or skipped) slot; a slot already recorded is left alone, so it fires once.
INSERT INTO scheduler_slots (topic, slot_at, event_id, fired_at)
VALUES (:topic, :slot_at, :event_id, :fired_at)
ON CONFLICT (topic, slot_at) DO NOTHING;

-- name: latest_slots
-- Each topic's latest recorded slot (where the scheduler resumes).
SELECT topic, MAX(slot_at) AS slot_at FROM scheduler_slots GROUP BY topic;

-- name: prune_slots
-- Forget slots older than :before, except each topic's latest (its "last fired" mark).
DELETE FROM scheduler_slots
WHERE slot_at < :before
  AND slot_at < (SELECT MAX(s.slot_at) FROM scheduler_slots s
                 WHERE s.topic = scheduler_slots.topic);

-- The email outbox ---------------------------------------------------------------------------

-- name: insert_outbox
-- Store an email instead of sending it (email.transport: outbox).
INSERT INTO outbox (created_at, sender, recipients, subject, message, run_id)
VALUES (:created_at, :sender, :recipients, :subject, :message, :run_id);

-- Task status and monitors -------------------------------------------------------------------

-- name: status_report
-- A task run finished or a job pinged: one upsert keeps the latest facts; `evaluated` says
-- whether the row is a monitor's (then it is read back and evaluated).
INSERT INTO task_status (name, last_run_at, last_status, last_started_at, last_success_at,
                         last_failure_at, last_error, created_at)
VALUES (:name, :now, :status,
        CASE WHEN :status = 'started' THEN :now END,
        CASE WHEN :status = 'succeeded' THEN :now END,
        CASE WHEN :status = 'failed' THEN :now END,
        CASE WHEN :status = 'failed' THEN :error END,
        :now)
ON CONFLICT (name) DO UPDATE SET
    last_run_at = excluded.last_run_at,
    last_status = excluded.last_status,
    last_started_at = COALESCE(excluded.last_started_at, task_status.last_started_at),
    last_success_at = COALESCE(excluded.last_success_at, task_status.last_success_at),
    last_failure_at = COALESCE(excluded.last_failure_at, task_status.last_failure_at),
    last_error = CASE WHEN excluded.last_status = 'failed' THEN excluded.last_error
                      ELSE task_status.last_error END
-- typeof(), not IS NOT NULL: SQLite 3.40 answers `monitor IS NULL` wrongly (0 for a NULL) in the
-- RETURNING clause of this upsert (every report would read its row back).
RETURNING typeof(monitor) <> 'null' OR state <> 'new' AS evaluated;

-- name: status_seen
-- A configured task's row, created the first time the daemon sees the task (its created_at is
-- the task's `task.created_at`); an existing row is left as it is.
INSERT INTO task_status (name, created_at) VALUES (:name, :now) ON CONFLICT (name) DO NOTHING;

-- name: status_get
-- One task's or monitor's row.
SELECT * FROM task_status WHERE name = :name;

-- name: status_hold
-- One monitor's row, to re-evaluate and write in this transaction (the ticker's): PostgreSQL's
-- block locks it, so two nodes ticking at once evaluate it one after the other.
SELECT * FROM task_status WHERE name = :name;

-- name: status_all
-- Every row, by name.
SELECT * FROM task_status ORDER BY name;

-- name: status_monitored
-- The rows with a monitor, by name.
SELECT * FROM task_status WHERE monitor IS NOT NULL ORDER BY name;

-- name: status_flip
-- Move a monitor from :old_state to :new_state: the one way a state changes, conditional on
-- the state it was read in, so two evaluations (a tick and a ping) never both flip it.
UPDATE task_status SET state = :new_state, state_changed_at = :now
WHERE name = :name AND state = :old_state;

-- name: status_set_monitor
-- Give a row its configured monitor (creating the row if needed).
INSERT INTO task_status (name, monitor, state_changed_at, created_at)
VALUES (:name, :monitor, :now, :now)
ON CONFLICT (name) DO UPDATE SET monitor = excluded.monitor;

-- name: status_unmonitor
-- Silence the monitors no longer configured (:names, a JSON array, are kept); their rows stay.
UPDATE task_status SET monitor = NULL, state = 'new', expect_from = NULL, state_changed_at = :now,
    flaps = 0
WHERE monitor IS NOT NULL AND name NOT IN (SELECT value FROM json_each(:names));

-- name: status_pause
-- Pause a monitor: no alert, not even the summary of the flips damped before.
UPDATE task_status SET state = 'paused', state_changed_at = :now, flaps = 0
WHERE name = :name AND monitor IS NOT NULL AND state != 'paused';

-- name: status_resume
-- Resume a paused monitor: new, expecting a success after now.
UPDATE task_status SET state = 'new', expect_from = :now, state_changed_at = :now
WHERE name = :name AND state = 'paused';

-- name: status_alerted
-- A monitor alerted: its damping interval starts again and its flaps were told.
UPDATE task_status SET alerted_at = :now, alerted_state = :state, flaps = 0 WHERE name = :name;

-- name: status_damped
-- Count a change that was damped (told by the next alert).
UPDATE task_status SET flaps = flaps + 1 WHERE name = :name;

-- name: task_work
-- A task's work for an event (taskstatus.work_outcome): its task run (:id is always one: the
-- query does not test the kind, so the primary key is the only way in, whatever the planner
-- knows of the table), and its action runs that are not final yet (due, started, scheduled
-- for a retry) or failed.
SELECT t.state AS task_state, t.error AS task_error,
       (SELECT COUNT(*) FROM runs a WHERE a.event_id = t.event_id AND a.task_run_id = t.id
          AND a.state NOT IN ('succeeded', 'failed')) AS pending,
       (SELECT 'action ' || a.action_type || ' (run ' || a.id || ') failed: '
               || COALESCE(a.error, '')
          FROM runs a WHERE a.event_id = t.event_id AND a.task_run_id = t.id
          AND a.state = 'failed' ORDER BY a.id LIMIT 1) AS action_error
FROM runs t WHERE t.id = :id;

-- name: status_metrics
-- /metrics: every monitor's state and latest report; every task's latest success (a row that is
-- not a ping monitor's is a task's).
SELECT name, state, last_run_at, last_success_at, monitor IS NOT NULL AS monitored,
       monitor IS NULL OR json_extract(monitor, '$.task') AS is_task
FROM task_status;

-- name: status_duration
-- A monitor's latest job duration (a start to its finish).
UPDATE task_status SET last_duration = :duration WHERE name = :name;

-- Monitor flips: the alert queue -------------------------------------------------------------

-- name: flip_insert
-- Record a change to or from down; :mail_state is 'pending' (an alert to send) or 'damped'.
INSERT INTO monitor_flips (name, old_state, new_state, created_at, event_id, status,
                           mail_state, mail_next_at)
VALUES (:name, :old_state, :new_state, :now, :event_id, :status, :mail_state, :now);

-- name: flips_trim
-- A monitor keeps its latest :keep flips; older ones go unless their alert is still pending.
DELETE FROM monitor_flips
WHERE name = :name AND mail_state <> 'pending'
  AND id <= (SELECT id FROM monitor_flips WHERE name = :name ORDER BY id DESC
             LIMIT 1 OFFSET :keep);

-- name: flips_due
-- The pending alerts whose (next) attempt is due, oldest first.
SELECT * FROM monitor_flips WHERE mail_state = 'pending' AND mail_next_at <= :now
ORDER BY id LIMIT :limit;

-- name: flip_take
-- Take a pending alert to send now: no other node sends it before :until (its next attempt
-- then, should this node die sending it); rowcount 0: another node took it first.
UPDATE monitor_flips SET mail_next_at = :until
WHERE id = :id AND mail_state = 'pending' AND mail_next_at <= :now;

-- name: flip_mail_done
-- An alert was sent, skipped or given up: final.
UPDATE monitor_flips SET mail_state = :mail_state, mail_attempts = mail_attempts + 1,
    mail_error = :error, mail_sent_at = :sent_at
WHERE id = :id AND mail_state = 'pending';

-- name: flip_mail_retry
-- An alert's email failed for now: count the attempt, try again at :next_at.
UPDATE monitor_flips SET mail_attempts = mail_attempts + 1, mail_error = :error,
    mail_next_at = :next_at
WHERE id = :id AND mail_state = 'pending';

-- name: flips_of
-- A monitor's latest flips, newest first (`runnerd monitors show`).
SELECT id, old_state, new_state, created_at, mail_state FROM monitor_flips
WHERE name = :name ORDER BY id DESC LIMIT :limit;

-- Monitor pings: the ping history -----------------------------------------------------------

-- name: ping_previous
-- The latest start or finish of this run id (NULL: pings without one): a start means a finish
-- now ends it.
SELECT kind, created_at FROM monitor_pings
WHERE name = :name AND rid IS :rid AND kind <> 'log' ORDER BY id DESC LIMIT 1;

-- name: ping_insert
-- Record one ping (its body kept up to monitoring.ping_body_limit).
INSERT INTO monitor_pings (name, created_at, kind, exit_status, rid, duration, method,
                           remote_addr, body, body_bytes)
VALUES (:name, :now, :kind, :exit_status, :rid, :duration, :method, :remote_addr, :body,
        :body_bytes);

-- name: pings_trim
-- A monitor keeps its latest :keep pings.
DELETE FROM monitor_pings
WHERE name = :name
  AND id <= (SELECT id FROM monitor_pings WHERE name = :name ORDER BY id DESC
             LIMIT 1 OFFSET :keep);

-- name: pings_recent
-- A monitor's latest pings, newest first (`runnerd monitors show`).
SELECT * FROM monitor_pings WHERE name = :name ORDER BY id DESC LIMIT :limit;

-- Workers ------------------------------------------------------------------------------------

-- name: worker_beat
-- This process's heartbeat: insert or refresh its row.
INSERT INTO workers (id, pid, host, started_at, heartbeat_at, healthy, active_runs, problem,
                     loop_lag, node)
VALUES (:id, :pid, :host, :started_at, :now, :healthy, :active_runs, :problem, :loop_lag, :node)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
    healthy = excluded.healthy, active_runs = excluded.active_runs,
    problem = excluded.problem, loop_lag = excluded.loop_lag;

-- name: worker_stopped
-- This process stopped cleanly.
UPDATE workers SET heartbeat_at = :now, stopped_at = :now, healthy = 0, active_runs = 0,
    problem = 'stopped'
WHERE id = :id;

-- name: workers_retire
-- Start-up on SQLite: mark the other processes' rows gone (the lock file proves they are).
UPDATE workers SET healthy = 0, active_runs = 0, problem = COALESCE(problem, 'gone')
WHERE id != :id AND stopped_at IS NULL AND healthy = 1;

-- name: workers_retire_node
-- Start-up on PostgreSQL: mark this node's earlier processes gone (the node's advisory lock
-- proves they are); other nodes' rows are theirs.
UPDATE workers SET healthy = 0, active_runs = 0, problem = COALESCE(problem, 'gone')
WHERE node = :node AND id != :id AND stopped_at IS NULL AND healthy = 1;

-- name: workers_lost
-- The leader: mark the rows of processes silent since before :before lost (their runs are
-- requeued by recover_lost_runs); a node that beats again rewrites its row.
UPDATE workers SET healthy = 0, active_runs = 0, problem = 'lost: no heartbeat'
WHERE stopped_at IS NULL AND heartbeat_at < :before
  AND (problem IS NULL OR problem != 'lost: no heartbeat');

-- name: workers_prune
-- Forget other processes' rows silent since before :before.
DELETE FROM workers WHERE heartbeat_at < :before AND id != :id;

-- name: workers_all
-- Every process's row, newest first.
SELECT * FROM workers ORDER BY started_at DESC;

-- Leases (PostgreSQL nodes): one holder at a time ----------------------------------------------

-- name: lease_take
-- Take or renew the lease :name for :holder until :ttl seconds after now (:now, or the
-- database's clock when NULL): granted when free, expired or already :holder's; a change of
-- holder starts a new term. No row: another holder has it.
INSERT INTO leases (name, holder, term, expires_at)
VALUES (:name, :holder, 1, COALESCE(:now, (julianday('now') - 2440587.5) * 86400.0) + :ttl)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    term = CASE WHEN leases.holder = excluded.holder THEN leases.term ELSE leases.term + 1 END,
    expires_at = excluded.expires_at
WHERE leases.holder = excluded.holder
   OR leases.expires_at < COALESCE(:now, (julianday('now') - 2440587.5) * 86400.0)
RETURNING holder, term, expires_at;

-- name: lease_release
-- Give the lease up at a clean stop (it expires now), if still :holder's.
UPDATE leases SET expires_at = 0 WHERE name = :name AND holder = :holder;

-- name: prune_lock
-- Retention runs from one process at a time: on PostgreSQL a transaction-level advisory lock
-- (ok false: another node prunes now); SQLite's writer lock already serialises.
SELECT 1 AS ok;

-- Retention: whole event trees (an event with no parent and every event descending from it) --

-- name: prune_roots
-- A page of candidate root events (no parent, or the parent is gone) created before :before,
-- oldest first, after the keyset cursor (:after_at, :after_rid), with what their own runs
-- say. Roots whose runs keep the tree (a failure younger than :cutoff_failed, a run not
-- final) are left out here, so trees kept for long cost no Python per pass; a root with
-- children is checked whole by prune_tree.
SELECT e.rid, e.id, e.created_at, COUNT(r.id) AS runs,
       COALESCE(SUM(r.state NOT IN ('failed', 'succeeded')), 0) AS open,
       COALESCE(SUM(r.state = 'failed'), 0) AS failed,
       COALESCE(MAX(r.finished_at), e.created_at) AS done_at,
       EXISTS (SELECT 1 FROM events c WHERE c.parent_id = e.id) AS has_children
FROM (SELECT rowid AS rid, id, created_at FROM events
      WHERE created_at < :before
        AND (created_at, rowid) > (:after_at, :after_rid)
        AND (parent_id IS NULL
             OR NOT EXISTS (SELECT 1 FROM events p WHERE p.id = events.parent_id))
        AND (SELECT COALESCE(MAX(r.state NOT IN ('failed', 'succeeded')), 0) = 0
                    AND COALESCE(MAX(r.finished_at), 0) < :before
                    AND (COALESCE(MAX(r.state = 'failed'), 0) = 0
                         OR COALESCE(MAX(r.finished_at), 0) < :cutoff_failed)
             FROM runs r WHERE r.event_id = events.id)
      ORDER BY created_at, rowid LIMIT :page) e
LEFT JOIN runs r ON r.event_id = e.id
GROUP BY e.rid ORDER BY e.created_at, e.rid;

-- name: prune_tree
-- Every event of the tree under :id (itself included), with what its runs say. UNION, not
-- UNION ALL: a parent_id cycle written by hand cannot make it loop.
WITH RECURSIVE tree (id) AS (
    SELECT :id
    UNION
    SELECT c.id FROM events c JOIN tree ON c.parent_id = tree.id
)
SELECT tree.id, COUNT(r.id) AS runs,
       COALESCE(SUM(r.state NOT IN ('failed', 'succeeded')), 0) AS open,
       COALESCE(SUM(r.state = 'failed'), 0) AS failed, MAX(r.finished_at) AS done_at
FROM tree LEFT JOIN runs r ON r.event_id = tree.id GROUP BY tree.id;

-- name: prune_event
-- Delete an event; its runs and their attempts go with it (ON DELETE CASCADE).
DELETE FROM events WHERE id = :id;

-- name: prune_flips
-- Delete at most :batch handled (not pending) flips created before :before. Ids grow with
-- time, so the range stops at the first row to keep instead of scanning the table.
DELETE FROM monitor_flips
WHERE id < COALESCE((SELECT id FROM monitor_flips
                     WHERE created_at >= :before OR mail_state = 'pending'
                     ORDER BY id LIMIT 1), 9223372036854775807)
  AND id < (SELECT MIN(id) FROM monitor_flips) + :batch;

-- name: prune_pings
-- Pings received before :before (the same id range as prune_flips); at most :batch rows.
DELETE FROM monitor_pings
WHERE id < COALESCE((SELECT id FROM monitor_pings WHERE created_at >= :before ORDER BY id LIMIT 1),
                    9223372036854775807)
  AND id < (SELECT MIN(id) FROM monitor_pings) + :batch;

-- name: prune_outbox
-- Delete at most :batch stored emails created before :before (the same id range as prune_flips).
DELETE FROM outbox
WHERE id < COALESCE((SELECT id FROM outbox WHERE created_at >= :before ORDER BY id LIMIT 1),
                    9223372036854775807)
  AND id < (SELECT MIN(id) FROM outbox) + :batch;

-- Stats: /api/stats, /metrics and the status page --------------------------------------------

-- name: queue_counts
-- Runs waiting or running, by kind and state. Each branch reads one partial index: O(queue),
-- not O(history); `unscheduled` is never written and has no index, so it is not counted.
SELECT kind, 'due' AS state, COUNT(*) AS n FROM runs WHERE state = 'due' GROUP BY kind
UNION ALL
SELECT kind, 'scheduled', COUNT(*) FROM runs WHERE state = 'scheduled' GROUP BY kind
UNION ALL
SELECT kind, 'started', COUNT(*) FROM runs WHERE state = 'started' GROUP BY kind;

-- name: due_task_depth
-- How many task runs wait to be rendered, counted up to :cap (the webhooks' back-pressure):
-- a range of the partial index runs_due, so it costs at most :cap index entries.
SELECT COUNT(*) AS n FROM (SELECT 1 FROM runs WHERE state = 'due' AND priority = :task_priority
                           LIMIT :cap) AS due;

-- name: finished_counts_since
-- Runs finished since :since, by kind and final state.
SELECT kind, state, COUNT(*) AS n FROM runs
WHERE state IN ('failed', 'succeeded') AND finished_at >= :since GROUP BY kind, state;

-- name: oldest_due
-- When the oldest due run became due (the queue's lag).
SELECT MIN(run_at) AS run_at FROM runs WHERE state = 'due';

-- name: top_waiting_tasks
-- The tasks with the most task runs waiting.
SELECT task_name AS name, COUNT(*) AS n FROM runs
WHERE state IN ('due', 'scheduled') AND kind = 'task' GROUP BY task_name ORDER BY n DESC LIMIT 10;

-- name: top_waiting_actions
-- The action types with the most action runs waiting.
SELECT action_type AS name, COUNT(*) AS n FROM runs
WHERE state IN ('due', 'scheduled') AND kind = 'action' GROUP BY action_type
ORDER BY n DESC LIMIT 10;

-- name: top_waiting_topics
-- The topics with the most event runs waiting.
SELECT e.topic AS name, COUNT(*) AS n FROM runs r JOIN events e ON e.id = r.event_id
WHERE r.state IN ('due', 'scheduled') AND r.kind = 'event' GROUP BY e.topic
ORDER BY n DESC LIMIT 10;

-- name: recent_runs
-- The status page's sample: the newest :limit runs (a rowid range, so history costs
-- nothing) created since :since, with their event's creation time.
SELECT r.id, r.kind, r.state, r.run_at, r.started_at, r.finished_at, r.event_id,
       e.created_at AS event_created_at
FROM runs r JOIN events e ON e.id = r.event_id
WHERE r.id > (SELECT COALESCE(MAX(id), 0) FROM runs) - :limit AND r.created_at >= :since;

-- name: failures_since
-- Failed runs since :since, grouped by task and action type, the most frequent first.
SELECT kind, task_name, action_type, COUNT(*) AS n, MAX(finished_at) AS last_at,
       MAX(id) AS last_id
FROM runs WHERE state = 'failed' AND finished_at >= :since
GROUP BY kind, task_name, action_type ORDER BY n DESC LIMIT 20;

-- name: flips_recent
-- The latest monitor flips since :since (at most 50), newest first.
SELECT id, name, old_state, new_state, created_at, mail_state FROM monitor_flips
WHERE created_at >= :since ORDER BY id DESC LIMIT 50;

-- The web console (web/console/pages.py) ------------------------------------------------------

-- name: console_runs
-- A page of runs, newest first by (created_at, id): of each kind in :kinds and state in :states
-- (JSON arrays), created at or after :since and before the keyset cursor (:before_at,
-- :before_id: created before :before_at, or at it with a smaller id; :before_id NULL: strictly
-- before). One range scan of runs_kind_state per (kind, state) pair, each at most :limit rows.
SELECT r.* FROM json_each(:kinds) AS k, json_each(:states) AS s
JOIN runs AS r ON r.id IN (
    SELECT id FROM runs
    WHERE kind = k.value AND state = s.value
      AND created_at >= :since AND created_at <= :before_at
      AND (created_at < :before_at OR id < :before_id)
    ORDER BY created_at DESC, id DESC LIMIT :limit)
ORDER BY r.created_at DESC, r.id DESC LIMIT :limit;

-- name: console_runs_of_task
-- console_runs for the runs of one task (:task), on runs_task_kind_state.
SELECT r.* FROM json_each(:kinds) AS k, json_each(:states) AS s
JOIN runs AS r ON r.id IN (
    SELECT id FROM runs
    WHERE task_name = :task AND kind = k.value AND state = s.value
      AND created_at >= :since AND created_at <= :before_at
      AND (created_at < :before_at OR id < :before_id)
    ORDER BY created_at DESC, id DESC LIMIT :limit)
ORDER BY r.created_at DESC, r.id DESC LIMIT :limit;

-- name: console_task_runs
-- The latest :per_task task runs (by finish, unfinished last) of each task in :names (a JSON
-- array), on the runs_task index.
SELECT r.* FROM json_each(:names) AS n
JOIN runs AS r ON r.id IN (SELECT id FROM runs WHERE task_name = n.value AND kind = 'task'
                           ORDER BY finished_at DESC LIMIT :per_task)
ORDER BY r.task_name, r.finished_at DESC;

-- name: console_run_tree
-- The runs of one event (its event run, task runs and action runs), in order, at most :limit.
SELECT * FROM runs WHERE event_id = :event_id ORDER BY id LIMIT :limit;

-- name: console_events
-- A page of events, newest first by (created_at, rid), created at or after :since and before
-- the keyset cursor (:before_at, :before_rid: the last event's time and rid; :before_rid NULL:
-- strictly before :before_at), on events_created. SQLite's rid is the rowid, which that index
-- ends with; PostgreSQL's is the id.
SELECT rowid AS rid, * FROM events
WHERE created_at >= :since AND created_at <= :before_at
  AND (created_at < :before_at OR rowid < :before_rid)
ORDER BY created_at DESC, rowid DESC LIMIT :limit;

-- name: console_events_of_topic
-- console_events of one :topic, on events_topic.
SELECT rowid AS rid, * FROM events
WHERE topic = :topic AND created_at >= :since AND created_at <= :before_at
  AND (created_at < :before_at OR rowid < :before_rid)
ORDER BY created_at DESC, rowid DESC LIMIT :limit;

-- name: console_event
-- One event by :id, as console_events shows it.
SELECT rowid AS rid, * FROM events WHERE id = :id;

-- name: console_runs_of_events
-- The runs of the events in :ids (a JSON array), in order, at most :limit.
SELECT * FROM runs WHERE event_id IN (SELECT value FROM json_each(:ids)) ORDER BY id
LIMIT :limit;

-- name: console_child_events
-- The events a run tree's actions emitted (children of event :id), at most :limit.
SELECT id, topic, created_at FROM events WHERE parent_id = :id ORDER BY created_at LIMIT :limit;

-- name: console_session_start
-- A signed-in browser: the SHA-256 of its session id, never the id.
INSERT INTO console_sessions (id_hash, csrf, created_at, expires_at)
VALUES (:id_hash, :csrf, :now, :expires_at);

-- name: console_session_get
-- The live session whose id hashes to :id_hash.
SELECT csrf, expires_at FROM console_sessions WHERE id_hash = :id_hash AND expires_at > :now;

-- name: console_session_end
-- Logout: the session ends on every daemon.
DELETE FROM console_sessions WHERE id_hash = :id_hash;

-- name: console_sessions_prune
-- Expired sessions, and the oldest beyond the newest :keep.
DELETE FROM console_sessions
WHERE expires_at <= :now
   OR id_hash NOT IN (SELECT id_hash FROM console_sessions ORDER BY created_at DESC LIMIT :keep);
