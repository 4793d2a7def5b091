"""runnerd.logs: a timestamp on each line unless under journald; a repeated error is written once
per interval, then once with its count."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator

import pytest

from runnerd import logs

from .conftest import TIMESTAMP, Clock, Daemon

Limited = tuple[logs.RepeatLimiter, io.StringIO, logging.Logger]


@pytest.mark.parametrize("journal_stream", ["absent", "its stderr", "another stream"])
def test_log_lines_carry_a_timestamp_unless_stderr_is_journalds(
        make_daemon: Callable[..., Daemon], journal_stream: str) -> None:
    """journald stamps each line itself: systemd names the stream it connected in
    JOURNAL_STREAM (`dev:inode`). A process that inherited the variable but writes to a file of
    its own still stamps its lines."""
    d = make_daemon("")
    d.log.touch()  # the daemon's stderr (appended to)
    if journal_stream == "its stderr":
        stat = os.stat(d.log)
        d.env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
    elif journal_stream == "another stream":
        stat = os.stat(d.tmp / "runnerd.yaml")
        d.env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
    else:
        d.env.pop("JOURNAL_STREAM", None)
    d.start()
    assert d.stop() == 0
    lines = d.logs().splitlines()
    assert any("runnerd listening on" in line for line in lines), lines
    stamped = [bool(TIMESTAMP.match(line)) for line in lines]
    assert stamped == [journal_stream != "its stderr"] * len(lines), lines


@pytest.fixture
def limited(clock: Clock) -> Iterator[Limited]:
    """A logger writing through a RepeatLimiter (10 s, on `clock`) into a string."""
    out = io.StringIO()
    handler = logs.RepeatLimiter(out, interval=10.0, clock=clock)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("runnerd.test_logs")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    yield handler, out, logger
    logger.handlers = []
    logger.propagate = True


def test_a_repeated_error_is_written_once_per_interval_then_counted(limited: Limited,
                                                                   clock: Clock) -> None:
    handler, out, logger = limited
    for n in range(1, 501):  # a full disk: every batch fails, each with its own size
        logger.error("cannot store %d event(s): %s", n, "database or disk is full")
        logger.info("progress %d", n)  # other levels are never limited
    clock.advance(5)
    logger.error("cannot store %d event(s): %s", 7, "database or disk is full")
    # different messages of one template (two problems of one reload) are two errors
    logger.error("reload rejected: %s", "tasks[0].code: bad Liquid")
    logger.error("reload rejected: %s", "webhooks[1].topic: must be user/*/*")
    lines = out.getvalue().splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    assert errors == ["ERROR runnerd.test_logs: cannot store 1 event(s): database or disk is full",
                      "ERROR runnerd.test_logs: reload rejected: tasks[0].code: bad Liquid",
                      "ERROR runnerd.test_logs: reload rejected: webhooks[1].topic: must be "
                      "user/*/*"]
    assert len(lines) == 503
    clock.advance(5)  # the interval has ended: the next record of any kind writes the count
    logger.info("later")
    assert out.getvalue().splitlines()[-2:] == [
        "ERROR runnerd.test_logs: cannot store 7 event(s): database or disk is full "
        "(repeated 500 times in 10 s)", "INFO runnerd.test_logs: later"]
    logger.error("cannot store %d event(s): %s", 3, "database or disk is full")  # a new interval
    assert out.getvalue().splitlines()[-1].endswith("cannot store 3 event(s): database or disk "
                                                    "is full")
    handler.close()


def test_the_count_is_written_at_close_without_the_traceback(limited: Limited) -> None:
    handler, out, logger = limited
    for n in range(3):
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            logger.exception("run %d crashed", n)
    assert out.getvalue().count("Traceback") == 1
    handler.close()  # logging.shutdown() at exit
    last = out.getvalue().splitlines()[-1]
    assert last == "ERROR runnerd.test_logs: run 2 crashed (repeated 2 times in 10 s)"
    assert out.getvalue().count("Traceback") == 1
