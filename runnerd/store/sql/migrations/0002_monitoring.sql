-- runnerd schema, version 2: monitoring. Times are Unix seconds (REAL, UTC), as everywhere.

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
    created_at      REAL NOT NULL
) WITHOUT ROWID;

-- Every change of a monitor to or from `down` (Healthchecks' "flip"), written in the same
-- transaction as the state change and its runnerd/monitors/* event: the durable alert queue.
CREATE TABLE monitor_flips (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    old_state       TEXT NOT NULL,
    new_state       TEXT NOT NULL,
    created_at      REAL NOT NULL,
    event_id        TEXT,                   -- the runnerd/monitors/down|up event
    status          TEXT NOT NULL,          -- JSON: the monitor's row after the change
    mail_state      TEXT NOT NULL DEFAULT 'pending' CHECK (mail_state IN (
                        'pending',  -- pending -> sent | skipped | failed
                        'sent',     -- emailed (or stored in the outbox)
                        'skipped',  -- no monitoring.mail_recipients when it was due
                        'failed')), -- gave up (permanent error or attempts exhausted)
    mail_attempts   INTEGER NOT NULL DEFAULT 0,
    mail_error      TEXT,
    mail_next_at    REAL NOT NULL,          -- when to (re)try
    mail_sent_at    REAL
);
CREATE INDEX monitor_flips_pending ON monitor_flips (mail_next_at) WHERE mail_state = 'pending';

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
    stopped_at   REAL                       -- set on a clean stop
) WITHOUT ROWID;

-- Events created, by source, kept by a trigger (Prometheus' runnerd_events_total): a counter
-- that pruning never lowers, and that counts events the CLI writes too.
CREATE TABLE event_counts (
    source TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO event_counts (source, n) SELECT source, COUNT(*) FROM events GROUP BY source;
CREATE TRIGGER events_count AFTER INSERT ON events BEGIN
    INSERT OR IGNORE INTO event_counts (source, n) VALUES (new.source, 0);
    UPDATE event_counts SET n = n + 1 WHERE source = new.source;
END;
