"""systemd: sd_notify over a real AF_UNIX datagram socket, and the unit file."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Daemon, require
from .test_heartbeat import notify_socket

UNIT = ROOT / "systemd" / "runnerd.service"


def receive(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def test_ready_watchdog_stopping(make_daemon) -> None:
    with notify_socket() as (path, sock):
        d: Daemon = make_daemon("tasks: []\n", env={"NOTIFY_SOCKET": path,
                                                    "WATCHDOG_USEC": "1000000"})
        d.start(wait=False)
        messages: list[str] = []
        deadline = time.monotonic() + 20
        while "READY=1" not in messages:
            assert time.monotonic() < deadline, messages
            messages.append(receive(sock, 20))
        # READY=1 comes once the port listens: connecting now must work at once.
        with socket.create_connection(("127.0.0.1", d.port), timeout=1):
            pass
        # The heartbeat feeds the watchdog at WATCHDOG_USEC / 2 while healthy.
        watchdogs = 0
        while watchdogs < 2:
            assert time.monotonic() < deadline
            watchdogs += receive(sock, 5) == "WATCHDOG=1"
        d.proc.send_signal(signal.SIGTERM)
        while (message := receive(sock, 10)) != "STOPPING=1":
            assert message == "WATCHDOG=1", message
        assert d.proc.wait(timeout=30) == 0


def test_reload_notifies(make_daemon) -> None:
    with notify_socket() as (path, sock):
        d: Daemon = make_daemon("tasks: []\n", env={"NOTIFY_SOCKET": path}).start()
        while receive(sock, 20) != "READY=1":
            pass
        d.proc.send_signal(signal.SIGHUP)
        got = []
        while "READY=1" not in got:
            got.append(receive(sock, 10))
        assert "RELOADING=1" in got
        assert d.stop() == 0


def test_unit_file() -> None:
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))
    assert settings["Type"] == "notify"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["StateDirectory"] == "runnerd"
    for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "ProtectHome", "DynamicUser"):
        assert key in settings, key
    assert settings["ProtectSystem"] == "strict"
    seconds = {k: int(settings[k].removesuffix("s")) for k in ("WatchdogSec", "TimeoutStopSec")}
    assert seconds["WatchdogSec"] >= 3 * 5  # several 5 s heartbeats per watchdog period
    assert seconds["TimeoutStopSec"] > 20 + 5  # shutdown_grace default + the listener's drain
    mebibytes = {k: int(settings[k].removesuffix("M")) for k in ("MemoryHigh", "MemoryMax")}
    # Room above SPEC's 50 MiB idle for renders with 1 MiB values, but a runaway is stopped.
    assert 4 * 50 <= mebibytes["MemoryHigh"] < mebibytes["MemoryMax"] <= 1024


def test_unit_verifies(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None,
            "no systemd-analyze (Debian package systemd)")
    runnerd = Path(sys.executable).with_name("runnerd")
    unit = tmp_path / "runnerd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/runnerd", str(runnerd)))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


@pytest.mark.timeout(20)
def test_notify_never_blocks_when_nobody_reads() -> None:
    # The heartbeat sends WATCHDOG=1 from the event loop: a reader that stopped reading fills
    # the socket's queue, and a blocking send would then freeze the whole daemon.
    from runnerd.monitoring.sd_notify import Notifier

    with notify_socket() as (path, _sock):
        notifier = Notifier(path)
        sent = [notifier.send("WATCHDOG=1") for _ in range(5000)]
    assert sent[0] is True
    assert sent[-1] is False  # dropped once the queue was full, instead of waiting
