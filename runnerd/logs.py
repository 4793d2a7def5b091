"""Logging to stderr: each line with a timestamp, unless stderr is journald's (it adds its own)."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

#: Seconds during which an error that repeats is written once (then one line with the count).
REPEAT_INTERVAL = 10.0
#: Distinct errors tracked at once; beyond it, new ones are written without a limit.
MAX_TRACKED = 1000
_NUMBERS = re.compile(r"\d+")


class ClientErrors(logging.Filter):
    """A malformed request (bad HTTP, an unsupported Content-Encoding) or a client that hangs up
    while aiohttp answers it (e.g. its `100 Continue`) is the client's doing: aiohttp logs it
    with a traceback at ERROR; make it one line at INFO, so a sender cannot fill the log with
    tracebacks. Errors of runnerd's own handlers keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        # only the daemon's records come here
        from aiohttp import http_exceptions, web_protocol

        exc = record.exc_info[1] if record.exc_info else None
        # RequestPayloadError: a body that does not inflate, met again when aiohttp drains it
        if isinstance(exc, http_exceptions.HttpProcessingError | web_protocol.RequestPayloadError):
            _one_info_line(record, "malformed request: %s", exc)
        elif isinstance(exc, ConnectionResetError):  # aiohttp's ClientConnectionResetError too
            _one_info_line(record, "the client disconnected: %s", exc)
        return True


def _one_info_line(record: logging.LogRecord, message: str, exc: BaseException) -> None:
    record.exc_info, record.exc_text = None, None
    record.levelno, record.levelname = logging.INFO, "INFO"
    record.msg, record.args = message, (" ".join(str(exc).split()),)


class _Window:
    __slots__ = ("ends", "count", "last")

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.count = 0  #: repeats suppressed so far
        self.last: logging.LogRecord | None = None  #: the latest suppressed repeat


class RepeatLimiter(logging.StreamHandler[TextIO]):
    """A stream handler that writes a repeated ERROR once per `interval`, then its count.

    A full disk fails every group commit: hundreds of identical lines a second. An ERROR (or
    CRITICAL) record is written; the same error again within `interval` seconds is counted, not
    written; the first record after the interval (of any kind, or the handler's close at exit)
    writes the last repeat once with "(repeated N times in S s)". "The same" is the
    logger, the level and the message with its numbers ignored: "cannot store 3 event(s)" and
    "cannot store 41 event(s)" are one error, while two different reload problems logged with
    one template are not.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = REPEAT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream)
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def emit(self, record: logging.LogRecord) -> None:
        """Write `record`, unless it repeats an error written less than `interval` ago."""
        try:
            now = self.clock()
            self._write_ended(now)
            if record.levelno >= logging.ERROR:
                key = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage()))
                window = self._windows.get(key)
                if window is not None:
                    window.count += 1
                    window.last = record
                    return
                if len(self._windows) < MAX_TRACKED:
                    self._windows[key] = _Window(now + self.interval)
        except Exception:  # noqa: BLE001 - logging must not raise (the stdlib's own rule)
            self.handleError(record)
            return
        super().emit(record)

    def _write_ended(self, now: float | None) -> None:
        """Write the count of every window that has ended (of every window, when `now` is None)."""
        ended = [key for key, w in self._windows.items() if now is None or now >= w.ends]
        for key in ended:
            window = self._windows.pop(key)
            if window.last is not None:
                super().emit(_summary(window.last, window.count, self.interval))

    def close(self) -> None:
        """Write the pending counts, then close."""
        self.acquire()
        try:
            self._write_ended(None)
        finally:
            self.release()
        super().close()


def _summary(record: logging.LogRecord, count: int, interval: float) -> logging.LogRecord:
    """`record` once more, saying how many times it repeated, without its traceback."""
    return logging.makeLogRecord({
        **record.__dict__, "exc_info": None, "exc_text": None, "args": None,
        "msg": f"{record.getMessage()} (repeated {count} times in {interval:g} s)"})


def under_journald(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether `stream` is connected to journald. systemd sets `JOURNAL_STREAM` to the device and
    inode (`dev:inode`) of the stream it connected; a process that inherits the variable but
    writes elsewhere (`> file`) is not connected to it."""
    try:
        device, inode = (int(x) for x in environ.get("JOURNAL_STREAM", "").split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError):  # not set or malformed; a stream with no file descriptor
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


#: A line: `2026-01-31T14:05:09.123 INFO runnerd.web.app: listening on …` (local time), without
#: the timestamp under journald.
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_TIMESTAMPED = "%(asctime)s.%(msecs)03d " + _FORMAT


def configure(verbose: bool, environ: Mapping[str, str]) -> None:
    """Log to stderr (`environ`: the process's): runnerd's loggers at INFO (DEBUG when
    `verbose`), everyone else's at WARNING, aiohttp's access log off and its client errors
    filtered (`ClientErrors`), repeats limited (`RepeatLimiter`).

    Set up by hand rather than with `logging.config.dictConfig`, whose module imports
    logging.handlers, socketserver and pickle: about 1 MiB of the daemon's idle RSS.
    """
    handler = RepeatLimiter(sys.stderr)
    handler.setFormatter(logging.Formatter(
        _FORMAT if under_journald(sys.stderr, environ) else _TIMESTAMPED, "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("runnerd").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrors) for f in server.filters):
        server.addFilter(ClientErrors())
