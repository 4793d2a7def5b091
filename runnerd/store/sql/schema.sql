-- The schema all the migrations together produce (migrations/0001 to 0006): a snapshot to read,
-- never applied. tests/test_store.py builds a database from the migrations and from this file
-- and fails, with a diff, when their tables, columns, indexes, views or triggers differ: a new
-- migration updates this file too. Times are Unix seconds (REAL, UTC); JSON is stored as TEXT.

-- Events: what happened (a webhook body, a schedule tick, an action's event...). Kept until
-- retention prunes them with their runs.
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

-- The console's events list by topic, newest first.
CREATE INDEX events_topic ON events (topic, created_at);

-- The run queue: one row per event run, task run and action run, moved through its states
-- by conditional updates (`WHERE state = :from`).
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
    finished_at   REAL,
    node          TEXT,                  -- the node that last started (or leased) it (§14)
    lease_until   REAL                   -- a task run being rendered: its node's lease ends
);

-- The claim reads only due runs: history never slows it.
CREATE INDEX runs_due ON runs (priority DESC, run_at, id) WHERE state = 'due';

CREATE INDEX runs_scheduled ON runs (run_at) WHERE state = 'scheduled';

CREATE INDEX runs_started ON runs (id) WHERE state = 'started';

CREATE INDEX runs_failed ON runs (finished_at) WHERE state = 'failed';

CREATE INDEX runs_event ON runs (event_id);

CREATE INDEX runs_task ON runs (task_name, finished_at) WHERE task_name IS NOT NULL;

-- The console's runs list, newest first by (created_at, id): a filter by kind and state (and
-- task) is one range scan per (kind, state) pair; the id is the rowid every index ends with.
CREATE INDEX runs_kind_state ON runs (kind, state, created_at);

CREATE INDEX runs_task_kind_state ON runs (task_name, kind, state, created_at)
    WHERE task_name IS NOT NULL;

-- One row per failed attempt that was retried (the last attempt is the run row itself).
CREATE TABLE run_attempts (
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    started_at  REAL,
    finished_at REAL NOT NULL,
    error       TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt)
) WITHOUT ROWID;

-- The expiring key-value cache of the cache action and `cache` in Liquid.
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

-- Emails stored instead of sent (email.transport: outbox).
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    sender     TEXT NOT NULL,
    recipients TEXT NOT NULL,   -- JSON list: to + cc + bcc
    subject    TEXT NOT NULL,
    message    TEXT NOT NULL,   -- the full RFC 5322 text
    run_id     INTEGER
);

-- Views for reading the file with sqlite3: times as text, runs with their topic.
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

-- One row per task (written when a task run reaches a final state, in the same transaction) and
-- per configured monitor (written by pings; task monitors share their task's row).
CREATE TABLE task_status (
    name            TEXT PRIMARY KEY,       -- the task's name, or the ping monitor's name
    last_run_at     REAL,                   -- the latest report (a run finishing, any ping)
    last_status     TEXT CHECK (last_status IN ('started', 'succeeded', 'failed')),
    last_started_at REAL,                   -- the latest /ping/{name}/start
    last_success_at REAL,
    last_failure_at REAL,
    last_error      TEXT,                   -- the latest failure's error (/fail: its body)
    state           TEXT NOT NULL DEFAULT 'new' CHECK (state IN (
                        'new',      -- no report yet (or not a monitor): never alerts
                        'up',       -- new|late|down -> up on a success in time
                        'late',     -- up -> late when the period passed without a success
                        'down',     -- late -> down after grace more; any -> down on a failure
                        'paused')), -- by `runnerd monitors pause`; resume -> new
    monitor         TEXT,                   -- JSON {period, schedule, grace, timezone, task};
                                            -- NULL: no monitor configured (state stays new)
    expect_from     REAL,                   -- set by resume: expect a success after this time
    state_changed_at REAL,
    created_at      REAL NOT NULL,
    alerted_at      REAL,                   -- this monitor's latest alert
    alerted_state   TEXT,                   -- the state that alert reported
    flaps           INTEGER NOT NULL DEFAULT 0, -- changes to or from down since alerted_at
                                            -- that were not alerted (damped): the next alert
                                            -- reports them; reset by every alert and by pause
    last_duration   REAL                    -- the latest job's duration (a /start to its finish)
) WITHOUT ROWID;

-- One row per daemon process; `runnerd workers` shows them with ages.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,          -- host:pid:start (unique per process)
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,             -- every 5 s while it runs
    healthy      INTEGER NOT NULL,          -- 0: a component died, the loop stalled, or the
                                            -- database refused a write
    active_runs  INTEGER NOT NULL DEFAULT 0,
    problem      TEXT,                      -- why it is not healthy
    loop_lag     REAL NOT NULL DEFAULT 0,   -- worst event-loop lag (s) since the last beat
    stopped_at   REAL,                      -- set on a clean stop
    node         TEXT                       -- node_name (default: the host name)
) WITHOUT ROWID;

-- Named leases held by one node at a time (the leader's: 'leader'), on PostgreSQL (§14).
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,               -- the node holding it
    term       INTEGER NOT NULL,            -- +1 on each change of holder
    expires_at REAL NOT NULL                -- Unix seconds
) WITHOUT ROWID;

-- Events created, by source, kept by a trigger (Prometheus' runnerd_events_total): a counter
-- that pruning never lowers, and that counts events the CLI writes too.
CREATE TABLE event_counts (
    source TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER events_count AFTER INSERT ON events BEGIN
    INSERT OR IGNORE INTO event_counts (source, n) VALUES (new.source, 0);
    UPDATE event_counts SET n = n + 1 WHERE source = new.source;
END;

-- Every change of a monitor to or from `down` (Healthchecks' "flip"), written in the same
-- transaction as the state change and its runnerd/monitors/* event: the durable alert queue.
CREATE TABLE monitor_flips (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    old_state       TEXT NOT NULL,
    new_state       TEXT NOT NULL,
    created_at      REAL NOT NULL,
    event_id        TEXT,                   -- the runnerd/monitors/down|up event (NULL: damped)
    status          TEXT NOT NULL,          -- JSON: the monitor's row after the change
    mail_state      TEXT NOT NULL DEFAULT 'pending' CHECK (mail_state IN (
                        'pending',  -- pending -> sent | skipped | failed
                        'sent',     -- emailed (or stored in the outbox)
                        'skipped',  -- no monitoring.mail_recipients when it was due
                        'failed',   -- gave up (permanent error or attempts exhausted)
                        'damped')), -- within alert_interval of the previous alert: no email, no
                                    -- event; counted in task_status.flaps for the next alert
    mail_attempts   INTEGER NOT NULL DEFAULT 0,
    mail_error      TEXT,
    mail_next_at    REAL NOT NULL,          -- when to (re)try
    mail_sent_at    REAL
);

CREATE INDEX monitor_flips_pending ON monitor_flips (mail_next_at) WHERE mail_state = 'pending';

-- each monitor keeps its latest taskstatus.FLIPS_KEPT flips (flips_trim)
CREATE INDEX monitor_flips_name ON monitor_flips (name, id);

-- Pings: every ping a monitor takes (Healthchecks' scheme), its body up to
-- monitoring.ping_body_limit; each monitor keeps its latest monitoring.ping_history pings
-- (pings_trim), and retention removes older ones.
CREATE TABLE monitor_pings (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,              -- the monitor
    created_at  REAL NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('success', 'start', 'fail', 'log')),
    exit_status INTEGER,                    -- /ping/{name}/{0-255}
    rid         TEXT,                       -- ?rid=: pairs a start with its finish
    duration    REAL,                       -- a finish: seconds since its start
    method      TEXT NOT NULL,              -- GET, POST or HEAD
    remote_addr TEXT,
    body        TEXT,                       -- at most monitoring.ping_body_limit bytes
    body_bytes  INTEGER NOT NULL            -- the body's size as received
);
CREATE INDEX monitor_pings_name ON monitor_pings (name, id);

-- Signed-in console browsers, shared by every daemon on the database and kept across restarts.
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,            -- SHA-256 (hex) of the cookie's session id, never
                                            -- the id itself
    csrf       TEXT NOT NULL,               -- the token the session's POST forms carry
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL                -- pruned at the next login after it
) WITHOUT ROWID;
