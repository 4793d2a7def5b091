-- runnerd schema, version 3: flap damping (issue 15). A monitor alerts (email and event) at most
-- once per `monitoring.alert_interval`; the changes in between are counted, kept as `damped`
-- flips, and summed up by the next alert.

ALTER TABLE task_status ADD COLUMN alerted_at REAL;     -- this monitor's latest alert
ALTER TABLE task_status ADD COLUMN alerted_state TEXT;  -- the state that alert reported
-- changes to or from down since alerted_at that were not alerted (damped): the next alert
-- reports them ("flapped N times"); reset by every alert and by pause
ALTER TABLE task_status ADD COLUMN flaps INTEGER NOT NULL DEFAULT 0;

-- monitor_flips again, its mail_state allowing `damped` (SQLite cannot alter a CHECK).
CREATE TABLE monitor_flips_v3 (
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
INSERT INTO monitor_flips_v3 (id, name, old_state, new_state, created_at, event_id, status,
                              mail_state, mail_attempts, mail_error, mail_next_at, mail_sent_at)
SELECT id, name, old_state, new_state, created_at, event_id, status, mail_state, mail_attempts,
       mail_error, mail_next_at, mail_sent_at FROM monitor_flips;
DROP TABLE monitor_flips;
ALTER TABLE monitor_flips_v3 RENAME TO monitor_flips;
CREATE INDEX monitor_flips_pending ON monitor_flips (mail_next_at) WHERE mail_state = 'pending';
-- each monitor keeps its latest taskstatus.FLIPS_KEPT flips (flips_trim)
CREATE INDEX monitor_flips_name ON monitor_flips (name, id);
