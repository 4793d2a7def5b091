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
                  finished_at)
VALUES (:kind, :state, :priority, :run_at, :event_id, :task_name, :action_type, :options, :meta,
        :perform_event, :task_run_id, :created_at, :result, :attempts, :started_at,
        :finished_at)
RETURNING id;

-- name: claim_runs
-- Subqueries in FROM need an alias on PostgreSQL 15.
UPDATE runs SET state = 'started', started_at = :now, attempts = attempts + 1
WHERE id IN (SELECT id FROM (
                 (SELECT id, priority, run_at FROM runs
                  WHERE state = 'due' AND priority = :action_priority
                  ORDER BY run_at, id LIMIT :limit)
                 UNION ALL
                 (SELECT id, priority, run_at FROM runs
                  WHERE state = 'due' AND priority = :event_priority
                  ORDER BY run_at, id LIMIT :event_limit)) AS due
             ORDER BY priority DESC, run_at, id LIMIT :limit)
RETURNING *;

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
SELECT * FROM runs
WHERE id < :before
  AND (CAST(:state AS TEXT) IS NULL OR state = :state)
  AND (CAST(:kind AS TEXT) IS NULL OR kind = :kind)
  AND (CAST(:task AS TEXT) IS NULL OR task_name = :task)
  AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR created_at >= :since)
  AND (CAST(:until AS DOUBLE PRECISION) IS NULL OR created_at < :until)
ORDER BY id DESC LIMIT :limit;

-- name: console_task_runs
-- SQLite's DESC puts NULLs last: so does NULLS LAST.
SELECT r.* FROM json_array_elements_text(CAST(:names AS json)) AS n(value)
JOIN LATERAL (SELECT * FROM runs WHERE task_name = n.value AND kind = 'task'
              ORDER BY finished_at DESC NULLS LAST LIMIT :per_task) AS r ON TRUE
ORDER BY r.task_name, r.finished_at DESC NULLS LAST;

-- name: console_events
SELECT id AS rid, * FROM events
WHERE created_at <= :before_at AND (created_at < :before_at OR id < CAST(:before_rid AS TEXT))
  AND (CAST(:topic AS TEXT) IS NULL OR topic = :topic)
  AND (CAST(:id AS TEXT) IS NULL OR id = :id)
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- name: console_runs_of_events
SELECT * FROM runs WHERE event_id IN (SELECT json_array_elements_text(CAST(:ids AS json)))
ORDER BY id LIMIT :limit;

-- name: recover_lost_runs
UPDATE runs SET state = 'due', node = NULL, lease_until = NULL,
    error = 'node ' || node || ' lost (no heartbeat for ' || CAST(:timeout AS TEXT) || ' s)'
WHERE state = 'started' AND node IS NOT NULL AND node != :node
  AND NOT EXISTS (SELECT 1 FROM workers
                  WHERE workers.node = runs.node AND workers.stopped_at IS NULL
                    AND workers.heartbeat_at >= :before);

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
