"""Performing runs: the worker's claim loop, what each kind of run does, the scheduler."""
