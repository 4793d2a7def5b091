"""The run queue: runs and their states, the ingest's group commit, operator moves, retention."""
