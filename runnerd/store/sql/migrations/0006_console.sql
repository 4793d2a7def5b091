-- runnerd schema, version 6: the console (SPEC §15).
-- The console's runs list, newest first by (created_at, id): a filter by kind and state (and
-- task) is one range scan per (kind, state) pair, bounded by the page size; the id is the rowid
-- every SQLite index ends with.
CREATE INDEX runs_kind_state ON runs (kind, state, created_at);
CREATE INDEX runs_task_kind_state ON runs (task_name, kind, state, created_at)
    WHERE task_name IS NOT NULL;
-- The events list by topic, newest first.
CREATE INDEX events_topic ON events (topic, created_at);
-- Signed-in browsers, shared by every daemon on the database and kept across restarts.
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,            -- SHA-256 (hex) of the cookie's session id, never
                                            -- the id itself
    csrf       TEXT NOT NULL,               -- the token the session's POST forms carry
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL                -- pruned at the next login after it
) WITHOUT ROWID;
