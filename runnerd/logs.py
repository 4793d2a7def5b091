"""Logging to stderr for journald (which adds the timestamps)."""

from __future__ import annotations

import logging
from typing import Any


class ClientErrors(logging.Filter):
    """A malformed request (bad HTTP, an unsupported Content-Encoding) is the client's mistake:
    aiohttp logs it with a traceback at ERROR; make it one line at INFO, so a sender cannot fill
    the log with tracebacks. Errors of runnerd's own handlers keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        # only the daemon's records come here
        from aiohttp import http_exceptions, web_protocol

        exc = record.exc_info[1] if record.exc_info else None
        # RequestPayloadError: a body that does not inflate, met again when aiohttp drains it
        if isinstance(exc, http_exceptions.HttpProcessingError | web_protocol.RequestPayloadError):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "malformed request: %s", (" ".join(str(exc).split()),)
        return True


def log_config(verbose: bool = False) -> dict[str, Any]:
    """A `logging.config.dictConfig` mapping."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "filters": {"client_errors": {"()": ClientErrors}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "runnerd": {"level": "DEBUG" if verbose else "INFO"},
            "aiohttp.access": {"level": "WARNING"},
            "aiohttp.server": {"filters": ["client_errors"]},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
