-- PostgreSQL's words for the statements of ../queries.sql that SQLite says differently: each
-- block replaces the block of the same name there (store/sql/__init__.py, `pg_queries`); every
-- other statement runs as written there. Keep a block's meaning identical to its SQLite twin
-- (tests/test_postgres.py runs every name on both engines). A string parameter reaches
-- PostgreSQL untyped: where nothing around it gives it a type (`:x IS NULL`), it is CAST.

-- name: events_by_ids
SELECT * FROM events WHERE id IN (SELECT json_array_elements_text(CAST(:ids AS json)));

-- name: insert_run
-- RETURNING id: the run's id (`Result.lastrowid`).
INSERT INTO runs (kind, state, priority, run_at, event_id, task_name, action_type, options, meta,
                  perform_event, task_run_id, created_at, result, attempts, started_at,
                  finished_at, node, lease_until)
VALUES (:kind, :state, :priority, :run_at, :event_id, :task_name, :action_type, :options, :meta,
        :perform_event, :task_run_id, :created_at, :result, :attempts, :started_at,
        :finished_at, :node, :lease_until)
RETURNING id;

-- name: claim_runs
-- Several nodes claim at once: each priority's due runs are locked in their own MATERIALIZED
-- CTE (FOR UPDATE is not allowed over a UNION) and SKIP LOCKED passes over the rows another
-- node is claiming, so no run is started twice and no claimer waits for another.
WITH action AS MATERIALIZED (
         SELECT id, priority, run_at FROM runs
         WHERE state = 'due' AND priority = :action_priority
         ORDER BY run_at, id LIMIT :limit FOR UPDATE SKIP LOCKED),
     event AS MATERIALIZED (
         SELECT id, priority, run_at FROM runs
         WHERE state = 'due' AND priority = :event_priority
         ORDER BY run_at, id LIMIT :event_limit FOR UPDATE SKIP LOCKED),
     picked AS (
         SELECT id FROM (SELECT * FROM action UNION ALL SELECT * FROM event) AS due
         ORDER BY priority DESC, run_at, id LIMIT :limit)
UPDATE runs SET state = 'started', started_at = :now, attempts = attempts + 1, node = :node
FROM picked WHERE runs.id = picked.id
RETURNING runs.*;

-- name: due_task_runs
-- Several nodes render: the task runs fetched are leased to :node until :lease_until in this
-- same statement (they stay due). Taken: unleased, expired, or already this node's (the worker
-- keeps its own from rendering twice); SKIP LOCKED passes over those another node is leasing.
UPDATE runs SET node = :node, lease_until = :lease_until
WHERE id IN (SELECT id FROM runs
             WHERE state = 'due' AND priority = :task_priority
               AND (lease_until IS NULL OR lease_until <= :now OR node = :node)
             ORDER BY run_at, id LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING *;

-- name: due_event_runs
-- Several nodes route: the due event runs are locked until the routing transaction commits
-- (SKIP LOCKED: another node routes the others) and marked with :node, which finishes them.
WITH picked AS MATERIALIZED (
         SELECT id, run_at FROM runs WHERE state = 'due' AND priority = :event_priority
         ORDER BY run_at, id LIMIT :limit FOR UPDATE SKIP LOCKED),
     marked AS (
         UPDATE runs SET node = :node FROM picked WHERE runs.id = picked.id
         RETURNING runs.id, runs.event_id, runs.attempts, picked.run_at)
SELECT id, event_id, attempts FROM marked ORDER BY run_at, id;

-- name: finish_run
-- As SQLite's, and only by the node holding the run (its claim, its lease, its routing): once
-- a task run's lease expired and another node leased it, this node's late finish is a no-op.
UPDATE runs SET state = :state, result = :result, error = :error, finished_at = :now,
                started_at = :started_at, attempts = :attempts, lease_until = NULL
WHERE id = :id AND state = :from AND attempts = :held
  AND node IS NOT DISTINCT FROM CAST(:node AS TEXT);

-- name: retry_later
-- As SQLite's, and only by the node holding the run (see finish_run).
UPDATE runs SET state = 'scheduled', run_at = :run_at, error = :error,
                started_at = :started_at, attempts = :attempts, lease_until = NULL
WHERE id = :id AND state = :from AND attempts = :held
  AND node IS NOT DISTINCT FROM CAST(:node AS TEXT);

-- name: list_runs
SELECT * FROM runs
WHERE (CAST(:state AS TEXT) IS NULL OR state = :state)
  AND (CAST(:kind AS TEXT) IS NULL OR kind = :kind)
  AND (CAST(:task AS TEXT) IS NULL OR task_name = :task)
ORDER BY id DESC LIMIT :limit;

-- name: cache_add
-- The sum is computed as NUMERIC and written only inside the 64-bit range; a stored value that
-- is not a canonical integer is never CAST (PostgreSQL would raise where SQLite gives 0).
INSERT INTO cache (key, value, expires_at)
SELECT :key, CAST(d AS TEXT), :expires_at
FROM (SELECT CAST(:increment AS NUMERIC) - CAST(:decrement AS NUMERIC) AS d) AS sum
WHERE d BETWEEN -9223372036854775808 AND 9223372036854775807
   OR EXISTS (SELECT 1 FROM cache WHERE key = :key AND expires_at > :now)  -- a live value
ON CONFLICT (key) DO UPDATE SET
    value = CAST(CASE WHEN cache.expires_at > :now THEN CAST(cache.value AS NUMERIC) ELSE 0 END
                 + CAST(:increment AS NUMERIC) - CAST(:decrement AS NUMERIC) AS TEXT),
    expires_at = excluded.expires_at
WHERE CASE WHEN cache.expires_at <= :now
           THEN CAST(:increment AS NUMERIC) - CAST(:decrement AS NUMERIC)
                BETWEEN -9223372036854775808 AND 9223372036854775807
           WHEN cache.value ~ '^(0|-?[1-9][0-9]{0,18})$'
           THEN CAST(cache.value AS NUMERIC) BETWEEN -9223372036854775808 AND 9223372036854775807
                AND CAST(cache.value AS NUMERIC) + CAST(:increment AS NUMERIC)
                    - CAST(:decrement AS NUMERIC)
                    BETWEEN -9223372036854775808 AND 9223372036854775807
           ELSE FALSE END
RETURNING CAST(value AS BIGINT) AS value;

-- name: status_report
INSERT INTO task_status (name, last_run_at, last_status, last_started_at, last_success_at,
                         last_failure_at, last_error, created_at)
VALUES (:name, :now, :status,
        CASE WHEN :status = 'started' THEN :now END,
        CASE WHEN :status = 'succeeded' THEN :now END,
        CASE WHEN :status = 'failed' THEN :now END,
        CASE WHEN :status = 'failed' THEN CAST(:error AS TEXT) END,
        :now)
ON CONFLICT (name) DO UPDATE SET
    last_run_at = excluded.last_run_at,
    last_status = excluded.last_status,
    last_started_at = COALESCE(excluded.last_started_at, task_status.last_started_at),
    last_success_at = COALESCE(excluded.last_success_at, task_status.last_success_at),
    last_failure_at = COALESCE(excluded.last_failure_at, task_status.last_failure_at),
    last_error = CASE WHEN excluded.last_status = 'failed' THEN excluded.last_error
                      ELSE task_status.last_error END
RETURNING monitor IS NOT NULL OR state <> 'new' AS evaluated;

-- name: status_hold
-- FOR UPDATE: a node ticking waits for another's tick of the row and then reads its result, so
-- a change (and a summary of damped changes) is written once.
SELECT * FROM task_status WHERE name = :name FOR UPDATE;

-- name: status_unmonitor
UPDATE task_status SET monitor = NULL, state = 'new', expect_from = NULL, state_changed_at = :now,
    flaps = 0
WHERE monitor IS NOT NULL
  AND name NOT IN (SELECT json_array_elements_text(CAST(:names AS json)));

-- name: status_metrics
SELECT name, state, last_run_at, last_success_at, monitor IS NOT NULL AS monitored,
       monitor IS NULL OR COALESCE(CAST(monitor AS jsonb) -> 'task' NOT IN
                                   ('null', 'false', '0', '""'), FALSE) AS is_task
FROM task_status;

-- name: ping_previous
SELECT kind, created_at FROM monitor_pings
WHERE name = :name AND rid IS NOT DISTINCT FROM CAST(:rid AS TEXT) AND kind <> 'log'
ORDER BY id DESC LIMIT 1;

-- name: prune_roots
-- No rowid: the keyset's tie-breaker is the event's id (events_created covers it).
SELECT e.rid, e.id, e.created_at, COUNT(r.id) AS runs,
       COUNT(r.id) FILTER (WHERE r.state NOT IN ('failed', 'succeeded')) AS open,
       COUNT(r.id) FILTER (WHERE r.state = 'failed') AS failed,
       COALESCE(MAX(r.finished_at), e.created_at) AS done_at,
       EXISTS (SELECT 1 FROM events c WHERE c.parent_id = e.id) AS has_children
FROM (SELECT id AS rid, id, created_at FROM events
      WHERE created_at < :before
        AND (created_at, id) > (:after_at, CAST(:after_rid AS TEXT))
        AND (parent_id IS NULL
             OR NOT EXISTS (SELECT 1 FROM events p WHERE p.id = events.parent_id))
        AND (SELECT NOT COALESCE(bool_or(r.state NOT IN ('failed', 'succeeded')), FALSE)
                    AND COALESCE(MAX(r.finished_at), 0) < :before
                    AND (NOT COALESCE(bool_or(r.state = 'failed'), FALSE)
                         OR COALESCE(MAX(r.finished_at), 0) < :cutoff_failed)
             FROM runs r WHERE r.event_id = events.id)
      ORDER BY created_at, id LIMIT :page) e
LEFT JOIN runs r ON r.event_id = e.id
GROUP BY e.rid, e.id, e.created_at ORDER BY e.created_at, e.rid;

-- name: prune_tree
WITH RECURSIVE tree (id) AS (
    SELECT CAST(:id AS TEXT)
    UNION
    SELECT c.id FROM events c JOIN tree ON c.parent_id = tree.id
)
SELECT tree.id, COUNT(r.id) AS runs,
       COUNT(r.id) FILTER (WHERE r.state NOT IN ('failed', 'succeeded')) AS open,
       COUNT(r.id) FILTER (WHERE r.state = 'failed') AS failed, MAX(r.finished_at) AS done_at
FROM tree LEFT JOIN runs r ON r.event_id = tree.id GROUP BY tree.id;

-- The web console: NULL filters need a type here, and JSON arrays are read with json functions.

-- name: console_runs
SELECT r.* FROM json_array_elements_text(CAST(:kinds AS json)) AS k(value)
CROSS JOIN json_array_elements_text(CAST(:states AS json)) AS s(value)
CROSS JOIN LATERAL (
    SELECT * FROM runs
    WHERE kind = k.value AND state = s.value
      AND created_at >= :since AND created_at <= :before_at
      AND (created_at < :before_at OR id < :before_id)
    ORDER BY created_at DESC, id DESC LIMIT :limit) AS r
ORDER BY r.created_at DESC, r.id DESC LIMIT :limit;

-- name: console_runs_of_task
SELECT r.* FROM json_array_elements_text(CAST(:kinds AS json)) AS k(value)
CROSS JOIN json_array_elements_text(CAST(:states AS json)) AS s(value)
CROSS JOIN LATERAL (
    SELECT * FROM runs
    WHERE task_name = :task AND kind = k.value AND state = s.value
      AND created_at >= :since AND created_at <= :before_at
      AND (created_at < :before_at OR id < :before_id)
    ORDER BY created_at DESC, id DESC LIMIT :limit) AS r
ORDER BY r.created_at DESC, r.id DESC LIMIT :limit;

-- name: console_task_runs
-- SQLite's DESC puts NULLs last: so does NULLS LAST.
SELECT r.* FROM json_array_elements_text(CAST(:names AS json)) AS n(value)
JOIN LATERAL (SELECT * FROM runs WHERE task_name = n.value AND kind = 'task'
              ORDER BY finished_at DESC NULLS LAST LIMIT :per_task) AS r ON TRUE
ORDER BY r.task_name, r.finished_at DESC NULLS LAST;

-- name: console_events
SELECT id AS rid, * FROM events
WHERE created_at >= :since AND created_at <= :before_at
  AND (created_at < :before_at OR id < CAST(:before_rid AS TEXT))
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: console_events_of_topic
SELECT id AS rid, * FROM events
WHERE topic = :topic AND created_at >= :since AND created_at <= :before_at
  AND (created_at < :before_at OR id < CAST(:before_rid AS TEXT))
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: console_event
SELECT id AS rid, * FROM events WHERE id = :id;

-- name: console_runs_of_events
SELECT * FROM runs WHERE event_id IN (SELECT json_array_elements_text(CAST(:ids AS json)))
ORDER BY id LIMIT :limit;

-- name: recover_lost_runs
UPDATE runs SET state = 'due', node = NULL, lease_until = NULL,
    error = 'node ' || node || ' lost (no heartbeat for ' || CAST(:timeout AS TEXT) || ' s)'
WHERE state = 'started' AND node IS NOT NULL AND node != :node
  AND NOT EXISTS (SELECT 1 FROM workers
                  WHERE workers.node = runs.node AND workers.stopped_at IS NULL
                    AND workers.heartbeat_at >= :before)
RETURNING id, attempts, started_at, error;

-- name: lease_take
-- The database's clock: the transaction's start (a lease statement runs on its own).
INSERT INTO leases (name, holder, term, expires_at)
VALUES (:name, :holder, 1,
        COALESCE(CAST(:now AS DOUBLE PRECISION), EXTRACT(EPOCH FROM now())) + :ttl)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    term = CASE WHEN leases.holder = excluded.holder THEN leases.term ELSE leases.term + 1 END,
    expires_at = excluded.expires_at
WHERE leases.holder = excluded.holder
   OR leases.expires_at < COALESCE(CAST(:now AS DOUBLE PRECISION), EXTRACT(EPOCH FROM now()))
RETURNING holder, term, expires_at;

-- name: prune_lock
-- The key is "runnerd" + 2 (pg.MIGRATE_LOCK is + 1); released at the transaction's end.
SELECT pg_try_advisory_xact_lock(32217264504009318) AS ok;
