"""Tasks: the configured tasks' registry, Mechanic's option keys, task exports (`runnerd import`)."""
