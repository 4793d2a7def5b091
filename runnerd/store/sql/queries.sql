-- Every statement runnerd runs. Parameters are :named; times are Unix seconds.

-- name: insert_event
INSERT INTO events (id, topic, data, source, parent_id, webhook_request_id, task_ids, created_at)
VALUES (:id, :topic, :data, :source, :parent_id, :webhook_request_id, :task_ids, :created_at);

-- name: insert_run
INSERT INTO runs (kind, state, priority, run_at, event_id, task_name, action_type, options, meta,
                  perform_event, task_run_id, created_at, result, attempts, started_at,
                  finished_at)
VALUES (:kind, :state, :priority, :run_at, :event_id, :task_name, :action_type, :options, :meta,
        :perform_event, :task_run_id, :created_at, :result, :attempts, :started_at,
        :finished_at);

-- name: promote_scheduled
UPDATE runs SET state = 'due' WHERE state = 'scheduled' AND run_at <= :now;

-- name: claim_runs
-- The runs that take a worker slot: action runs (priority 3), then event runs (priority 1), FIFO
-- within a kind; two ranges of runs_due, so a backlog of due task runs is never scanned.
-- :event_limit caps the event runs (0 where the worker routes them instead: due_event_runs).
UPDATE runs SET state = 'started', started_at = :now, attempts = attempts + 1
WHERE id IN (SELECT id FROM (
                 SELECT * FROM (SELECT id, priority, run_at FROM runs
                                WHERE state = 'due' AND priority = 3
                                ORDER BY run_at, id LIMIT :limit)
                 UNION ALL
                 SELECT * FROM (SELECT id, priority, run_at FROM runs
                                WHERE state = 'due' AND priority = 1
                                ORDER BY run_at, id LIMIT :event_limit))
             ORDER BY priority DESC, run_at, id LIMIT :limit)
RETURNING *;

-- name: due_task_runs
-- Task runs (priority 2) the worker renders next, FIFO; they stay due until they are finished.
SELECT * FROM runs WHERE state = 'due' AND priority = 2 ORDER BY run_at, id LIMIT :limit;

-- name: due_event_runs
-- Event runs (priority 1) the daemon's worker routes in its transaction, FIFO; no slot taken.
SELECT id, event_id, attempts FROM runs WHERE state = 'due' AND priority = 1
ORDER BY run_at, id LIMIT :limit;

-- name: event_by_id
SELECT * FROM events WHERE id = :id;

-- name: events_by_ids
-- :ids is a JSON array of event ids (one query for a whole claimed batch).
SELECT * FROM events WHERE id IN (SELECT value FROM json_each(:ids));

-- name: finish_run
-- :from is 'started' (a claimed run) or 'due' (a task run rendered between the worker's turns,
-- or an event run routed in its turn, whose attempt and start are written here); a run no
-- longer in that state is left alone.
UPDATE runs SET state = :state, result = :result, error = :error, finished_at = :now,
                started_at = :started_at, attempts = :attempts
WHERE id = :id AND state = :from;

-- name: retry_later
UPDATE runs SET state = 'scheduled', run_at = :run_at, error = :error,
                started_at = :started_at, attempts = :attempts
WHERE id = :id AND state = :from;

-- name: insert_attempt
INSERT INTO run_attempts (run_id, attempt, started_at, finished_at, error)
VALUES (:run_id, :attempt, :started_at, :finished_at, :error)
ON CONFLICT (run_id, attempt) DO UPDATE SET error = excluded.error,
    finished_at = excluded.finished_at;

-- name: attempts_of_run
SELECT attempt, started_at, finished_at, error FROM run_attempts WHERE run_id = :id
ORDER BY attempt;

-- name: requeue_started
-- A run left started by a crash (or interrupted by a stop) goes back to due; its attempt counts.
UPDATE runs SET state = 'due' WHERE state = 'started';

-- name: requeue_run
UPDATE runs SET state = 'due' WHERE id = :id AND state = 'started';

-- name: run_by_id
SELECT * FROM runs WHERE id = :id;

-- name: list_runs
SELECT * FROM runs
WHERE (:state IS NULL OR state = :state)
  AND (:kind IS NULL OR kind = :kind)
  AND (:task IS NULL OR task_name = :task)
ORDER BY id DESC LIMIT :limit;

-- name: retry_failed_run
UPDATE runs SET state = 'due', run_at = :now, error = NULL, result = NULL,
    started_at = NULL, finished_at = NULL
WHERE id = :id AND state = 'failed' AND kind IN ('task', 'action');

-- name: cancel_run
UPDATE runs SET state = 'failed', error = 'cancelled', finished_at = :now
WHERE id = :id AND state IN ('unscheduled', 'scheduled', 'due');

-- name: cache_get
SELECT value FROM cache WHERE key = :key AND expires_at > :now;

-- name: cache_keys
SELECT key FROM cache WHERE expires_at > :now ORDER BY key LIMIT 10000;

-- name: cache_set
INSERT INTO cache (key, value, expires_at) VALUES (:key, :value, :expires_at)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at;

-- name: cache_add
-- Add :increment - :decrement to the integer under :key (0 when absent or expired) and reset its
-- TTL, in one statement; returns the new value, or no row (nothing written) when the stored
-- value is not a canonical 64-bit integer or the sum leaves that range (SQLite's overflowing
-- integer arithmetic gives a REAL).
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
DELETE FROM cache WHERE key = :key;

-- name: cache_purge
DELETE FROM cache WHERE expires_at <= :now;

-- name: insert_slot
INSERT INTO scheduler_slots (topic, slot_at, event_id, fired_at)
VALUES (:topic, :slot_at, :event_id, :fired_at)
ON CONFLICT (topic, slot_at) DO NOTHING;

-- name: latest_slots
SELECT topic, MAX(slot_at) AS slot_at FROM scheduler_slots GROUP BY topic;

-- name: prune_slots
-- Keep a week of slots, and always each topic's latest (it is the "last fired" mark).
DELETE FROM scheduler_slots
WHERE slot_at < :before
  AND slot_at < (SELECT MAX(s.slot_at) FROM scheduler_slots s
                 WHERE s.topic = scheduler_slots.topic);

-- name: insert_outbox
INSERT INTO outbox (created_at, sender, recipients, subject, message, run_id)
VALUES (:created_at, :sender, :recipients, :subject, :message, :run_id);

-- name: queue_counts
-- Each branch reads one partial index: O(queue), not O(history). `unscheduled` is reserved
-- (runnerd never writes it) and has no index, so counting it would scan every run ever kept.
SELECT kind, 'due' AS state, COUNT(*) AS n FROM runs WHERE state = 'due' GROUP BY kind
UNION ALL
SELECT kind, 'scheduled', COUNT(*) FROM runs WHERE state = 'scheduled' GROUP BY kind
UNION ALL
SELECT kind, 'started', COUNT(*) FROM runs WHERE state = 'started' GROUP BY kind;

-- name: finished_counts_since
SELECT kind, state, COUNT(*) AS n FROM runs
WHERE state IN ('failed', 'succeeded') AND finished_at >= :since GROUP BY kind, state;

-- name: oldest_due
SELECT MIN(run_at) AS run_at FROM runs WHERE state = 'due';

-- name: top_waiting_tasks
SELECT task_name AS name, COUNT(*) AS n FROM runs
WHERE state IN ('due', 'scheduled') AND kind = 'task' GROUP BY task_name ORDER BY n DESC LIMIT 10;

-- name: top_waiting_actions
SELECT action_type AS name, COUNT(*) AS n FROM runs
WHERE state IN ('due', 'scheduled') AND kind = 'action' GROUP BY action_type
ORDER BY n DESC LIMIT 10;

-- name: top_waiting_topics
SELECT e.topic AS name, COUNT(*) AS n FROM runs r JOIN events e ON e.id = r.event_id
WHERE r.state IN ('due', 'scheduled') AND r.kind = 'event' GROUP BY e.topic
ORDER BY n DESC LIMIT 10;

-- Monitoring (migration 0002): task_status, monitor flips, workers, counters, the status page.

-- name: status_report
-- A task run finished, or a job pinged: one upsert keeps the latest facts.
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
-- RETURNING clause of this upsert, which made every report read the row back.
RETURNING typeof(monitor) <> 'null' OR state <> 'new' AS evaluated;

-- name: status_get
SELECT * FROM task_status WHERE name = :name;

-- name: status_all
SELECT * FROM task_status ORDER BY name;

-- name: status_monitored
SELECT * FROM task_status WHERE monitor IS NOT NULL ORDER BY name;

-- name: status_flip
-- The one way a monitor's state changes: conditional on the state it was read in, so two
-- evaluations (a tick and a ping, or two daemons' worth of restarts) can never both flip it.
UPDATE task_status SET state = :new_state, state_changed_at = :now
WHERE name = :name AND state = :old_state;

-- name: status_set_monitor
INSERT INTO task_status (name, monitor, state_changed_at, created_at)
VALUES (:name, :monitor, :now, :now)
ON CONFLICT (name) DO UPDATE SET monitor = excluded.monitor;

-- name: status_unmonitor
-- Monitors removed from the configuration: their rows stay (task facts), silenced.
UPDATE task_status SET monitor = NULL, state = 'new', expect_from = NULL, state_changed_at = :now,
    flaps = 0
WHERE monitor IS NOT NULL AND name NOT IN (SELECT value FROM json_each(:names));

-- name: status_pause
-- Paused: no alert, not even the summary of the flips damped before.
UPDATE task_status SET state = 'paused', state_changed_at = :now, flaps = 0
WHERE name = :name AND monitor IS NOT NULL AND state != 'paused';

-- name: status_resume
UPDATE task_status SET state = 'new', expect_from = :now, state_changed_at = :now
WHERE name = :name AND state = 'paused';

-- name: status_alerted
-- A monitor alerted (taskstatus.alert): the damping interval starts again, the flaps are told.
UPDATE task_status SET alerted_at = :now, alerted_state = :state, flaps = 0 WHERE name = :name;

-- name: status_damped
UPDATE task_status SET flaps = flaps + 1 WHERE name = :name;

-- name: flip_insert
-- :mail_state is 'pending' (an alert to send) or 'damped' (history only).
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
SELECT * FROM monitor_flips WHERE mail_state = 'pending' AND mail_next_at <= :now
ORDER BY id LIMIT :limit;

-- name: flip_mail_done
UPDATE monitor_flips SET mail_state = :mail_state, mail_attempts = mail_attempts + 1,
    mail_error = :error, mail_sent_at = :sent_at
WHERE id = :id AND mail_state = 'pending';

-- name: flip_mail_retry
UPDATE monitor_flips SET mail_attempts = mail_attempts + 1, mail_error = :error,
    mail_next_at = :next_at
WHERE id = :id AND mail_state = 'pending';

-- name: flips_recent
SELECT id, name, old_state, new_state, created_at, mail_state FROM monitor_flips
WHERE created_at >= :since ORDER BY id DESC LIMIT 50;

-- name: worker_beat
INSERT INTO workers (id, pid, host, started_at, heartbeat_at, healthy, active_runs, problem,
                     loop_lag)
VALUES (:id, :pid, :host, :started_at, :now, :healthy, :active_runs, :problem, :loop_lag)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
    healthy = excluded.healthy, active_runs = excluded.active_runs,
    problem = excluded.problem, loop_lag = excluded.loop_lag;

-- name: worker_stopped
UPDATE workers SET heartbeat_at = :now, stopped_at = :now, healthy = 0, active_runs = 0,
    problem = 'stopped'
WHERE id = :id;

-- name: workers_retire
-- At start-up: the lock file proves earlier processes on this database are gone.
UPDATE workers SET healthy = 0, active_runs = 0, problem = COALESCE(problem, 'gone')
WHERE id != :id AND stopped_at IS NULL AND healthy = 1;

-- name: workers_prune
DELETE FROM workers WHERE heartbeat_at < :before AND id != :id;

-- name: workers_all
SELECT * FROM workers ORDER BY started_at DESC;

-- name: event_counts
SELECT source, n FROM event_counts ORDER BY source;

-- name: recent_runs
-- The status page's sample: the newest :limit runs (a rowid range, so history costs nothing)
-- created since :since, with their event's creation time.
SELECT r.id, r.kind, r.state, r.run_at, r.started_at, r.finished_at, r.event_id,
       e.created_at AS event_created_at
FROM runs r JOIN events e ON e.id = r.event_id
WHERE r.id > (SELECT COALESCE(MAX(id), 0) FROM runs) - :limit AND r.created_at >= :since;

-- name: failures_since
SELECT kind, task_name, action_type, COUNT(*) AS n, MAX(finished_at) AS last_at,
       MAX(id) AS last_id
FROM runs WHERE state = 'failed' AND finished_at >= :since
GROUP BY kind, task_name, action_type ORDER BY n DESC LIMIT 20;

-- name: defer_run
-- A claimed run handed back unperformed (its target already has its share of the slots): it
-- waits until :run_at, and the claim's attempt does not count.
UPDATE runs SET state = 'scheduled', run_at = :run_at, attempts = attempts - 1
WHERE id = :id AND state = 'started';

-- ============================================================================================
-- Retention (retention.prune_batch, retention.prune; issue 6 part 7). Appended as one block:
-- retention works on whole event trees (an event with no parent, and every event descending
-- from it).
-- ============================================================================================

-- name: prune_roots
-- A page of candidate root events (no parent, or the parent is gone) created before :before,
-- oldest first, after the keyset cursor (:after_at, :after_rid). The root's own runs rule out
-- most trees that stay (a failure younger than :cutoff_failed, a run not final) inside SQLite,
-- so trees kept for 90 days cost no Python per pass; a root with children is checked whole by
-- prune_tree.
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
-- Its runs and their attempts go with it (ON DELETE CASCADE).
DELETE FROM events WHERE id = :id;

-- name: prune_flips
-- Alerts handled (not pending) created before :before. Ids grow with time, so the range stops at
-- the first row to keep instead of scanning the table; at most :batch rows.
DELETE FROM monitor_flips
WHERE id < COALESCE((SELECT id FROM monitor_flips
                     WHERE created_at >= :before OR mail_state = 'pending'
                     ORDER BY id LIMIT 1), 9223372036854775807)
  AND id < (SELECT MIN(id) FROM monitor_flips) + :batch;

-- name: prune_outbox
-- Stored messages created before :before (the same id range as prune_flips).
DELETE FROM outbox
WHERE id < COALESCE((SELECT id FROM outbox WHERE created_at >= :before ORDER BY id LIMIT 1),
                    9223372036854775807)
  AND id < (SELECT MIN(id) FROM outbox) + :batch;

-- Loop protection (handlers.task_run): the actions of this task's latest run on the parent event.

-- name: predecessor_actions
SELECT action_type, options FROM runs
WHERE task_run_id = (SELECT id FROM runs WHERE event_id = :parent_id AND kind = 'task'
                       AND task_name = :task_name ORDER BY id DESC LIMIT 1)
ORDER BY id;
