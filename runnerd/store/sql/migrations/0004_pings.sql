-- runnerd schema, version 4: ping history (issue 19). Every ping a monitor takes (Healthchecks'
-- scheme: success, /start, /fail, /{exit status}, /log), with its body up to
-- monitoring.ping_body_limit; each monitor keeps its latest monitoring.ping_history pings, and
-- retention removes older ones.
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

-- The latest job's duration (a /start followed by its success or failure).
ALTER TABLE task_status ADD COLUMN last_duration REAL;
