"""Tasks: the configured tasks' registry, Mechanic's option keys, previews, task exports."""
