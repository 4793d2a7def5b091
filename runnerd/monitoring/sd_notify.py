"""sd_notify: READY=1, STOPPING=1 and WATCHDOG=1 to systemd over $NOTIFY_SOCKET."""

from __future__ import annotations

import socket


class Notifier:
    """Sends state changes to systemd; does nothing when not started by systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    def send(self, message: str) -> bool:
        """Send one datagram (e.g. "READY=1"); False when there is no socket or it failed.

        Never blocks: the heartbeat calls this on the event loop, and a reader that stopped
        reading (a full socket queue) must cost a dropped WATCHDOG=1, not a frozen daemon.
        """
        if not self.address:
            return False
        address = self.address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.connect(address)
                sock.send(message.encode())
        except OSError:
            return False
        return True
