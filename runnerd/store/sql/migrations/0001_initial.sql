-- runnerd schema, version 1.
-- Times are Unix seconds (REAL, UTC) in every column; in sqlite3 read them with
-- datetime(created_at, 'unixepoch'). JSON columns hold JSON text (json_extract works on them).

CREATE TABLE events (
    id                 TEXT PRIMARY KEY,      -- UUID
    topic              TEXT NOT NULL,         -- domain/subject/verb
    data               TEXT,                  -- JSON, or NULL for nil
    source             TEXT NOT NULL,         -- webhook, scheduler, action, cli, api, runnerd
    parent_id          TEXT,                  -- the event whose run led to this one
    webhook_request_id TEXT,                  -- the X-Request-Id answered to the webhook
    task_ids           TEXT,                  -- JSON list of task ids that may respond; NULL: any
    created_at         REAL NOT NULL
);
CREATE INDEX events_parent ON events (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX events_created ON events (created_at);

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL CHECK (kind IN ('event', 'task', 'action')),
    state         TEXT NOT NULL CHECK (state IN (
                      'unscheduled',   -- no time yet (reserved)
                      'scheduled',     -- scheduled -> due when run_at comes
                      'due',           -- due -> started when a worker claims it
                      'started',       -- started -> succeeded | failed | scheduled (retry)
                      'failed',        -- final (a manual retry moves it back to due)
                      'succeeded')),   -- final
    priority      INTEGER NOT NULL,      -- action 3 > task 2 > event 1
    run_at        REAL NOT NULL,         -- when it is (or was) due
    event_id      TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    task_name     TEXT,                  -- task and action runs
    action_type   TEXT,                  -- action runs
    options       TEXT,                  -- JSON: an action run's options
    meta          TEXT,                  -- JSON: an action run's meta
    perform_event INTEGER NOT NULL DEFAULT 1,  -- 0: no mechanic/actions/perform for it
    result        TEXT,                  -- JSON
    error         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,  -- attempts performed (1 after a first success)
    task_run_id   INTEGER,               -- an action run's task run
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL
);
-- The claim reads only due runs: history never slows it.
CREATE INDEX runs_due ON runs (priority DESC, run_at, id) WHERE state = 'due';
CREATE INDEX runs_scheduled ON runs (run_at) WHERE state = 'scheduled';
CREATE INDEX runs_started ON runs (id) WHERE state = 'started';
CREATE INDEX runs_failed ON runs (finished_at) WHERE state = 'failed';
CREATE INDEX runs_event ON runs (event_id);
CREATE INDEX runs_task ON runs (task_name, finished_at) WHERE task_name IS NOT NULL;

-- One row per failed attempt that was retried (the last attempt is the run row itself).
CREATE TABLE run_attempts (
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    started_at  REAL,
    finished_at REAL NOT NULL,
    error       TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt)
) WITHOUT ROWID;

CREATE TABLE cache (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,   -- JSON
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX cache_expires ON cache (expires_at);

-- The scheduler's bookkeeping: one row per fired slot. The primary key is what makes a slot
-- fire at most once, whatever restarts or overlapping ticks happen.
CREATE TABLE scheduler_slots (
    topic    TEXT NOT NULL,
    slot_at  REAL NOT NULL,     -- the wall-clock boundary, as Unix seconds
    event_id TEXT,              -- NULL: recorded without firing (first start, new topic)
    fired_at REAL NOT NULL,
    PRIMARY KEY (topic, slot_at)
) WITHOUT ROWID;

CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    sender     TEXT NOT NULL,
    recipients TEXT NOT NULL,   -- JSON list: to + cc + bcc
    subject    TEXT NOT NULL,
    message    TEXT NOT NULL,   -- the full RFC 5322 text
    run_id     INTEGER
);

CREATE VIEW pending_runs AS
    SELECT r.id, r.kind, r.state, r.priority, datetime(r.run_at, 'unixepoch') AS run_at,
           r.task_name, r.action_type, e.topic, r.attempts, r.error
    FROM runs r JOIN events e ON e.id = r.event_id
    WHERE r.state IN ('unscheduled', 'scheduled', 'due');

CREATE VIEW active_runs AS
    SELECT r.id, r.kind, r.task_name, r.action_type, e.topic, r.attempts,
           datetime(r.started_at, 'unixepoch') AS started_at
    FROM runs r JOIN events e ON e.id = r.event_id
    WHERE r.state = 'started';

CREATE VIEW failed_runs AS
    SELECT r.id, r.kind, r.task_name, r.action_type, e.topic, r.attempts, r.error,
           datetime(r.finished_at, 'unixepoch') AS finished_at
    FROM runs r JOIN events e ON e.id = r.event_id
    WHERE r.state = 'failed';

CREATE VIEW queue_stats AS
    SELECT kind, state, COUNT(*) AS runs,
           datetime(MIN(run_at), 'unixepoch') AS oldest_run_at
    FROM runs GROUP BY kind, state;
