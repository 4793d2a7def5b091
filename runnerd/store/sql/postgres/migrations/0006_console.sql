-- runnerd schema, version 6, on PostgreSQL: the console (SPEC §15), as SQLite's 0006_console.sql
-- (whose indexes end with the rowid: here the id is spelled out).
CREATE INDEX runs_kind_state ON runs (kind, state, created_at, id);
CREATE INDEX runs_task_kind_state ON runs (task_name, kind, state, created_at, id)
    WHERE task_name IS NOT NULL;
CREATE INDEX events_topic ON events (topic, created_at, id);
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,
    csrf       TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
