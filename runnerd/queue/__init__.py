"""The run queue: runs and their states, the ingest's group commit, task and monitor status rows
(`taskstatus`, updated in the transactions that finish runs), operator moves, retention."""
