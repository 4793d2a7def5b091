"""Logging to stderr for journald (which adds the timestamps)."""

from __future__ import annotations

from typing import Any


def log_config(verbose: bool = False) -> dict[str, Any]:
    """A `logging.config.dictConfig` mapping."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "runnerd": {"level": "DEBUG" if verbose else "INFO"},
            "aiohttp.access": {"level": "WARNING"},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
