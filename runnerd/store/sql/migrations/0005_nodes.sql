-- runnerd schema, version 5: nodes (SPEC §14). Several runnerd processes may share one
-- PostgreSQL database; SQLite has one process, but keeps the same columns so the tables match.
-- The node that last started (or leased, for a task run being rendered) a run, and until when
-- a task run's render lease holds; NULL when no node holds it.
ALTER TABLE runs ADD COLUMN node TEXT;
ALTER TABLE runs ADD COLUMN lease_until REAL;
-- The node name of each daemon process (`node_name`, by default the host name).
ALTER TABLE workers ADD COLUMN node TEXT;
-- Named leases held by one node at a time (the leader's: name 'leader'); taken and renewed on
-- the database's clock, a new term each time another node takes it over.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,               -- the node holding it
    term       INTEGER NOT NULL,            -- +1 on each change of holder
    expires_at REAL NOT NULL                -- Unix seconds
) WITHOUT ROWID;
