"""Real servers on loopback for the action tests: an aiosmtpd SMTP server, an HTTP server, TLS
material, ports.

Nothing here is a mock: the SMTP server is aiosmtpd's, run in its controller thread on
127.0.0.1 with an ephemeral port bound before it starts (no free-port race).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiosmtpd.controller
import aiosmtpd.smtp
import trustme

from runnerd import actions, models


@dataclasses.dataclass
class Received:
    """One message the server accepted."""

    peer: Any
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    authenticated: bool | None


class Recorder:
    """An aiosmtpd handler that records accepted messages; its replies can be scripted."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        #: Replies given to DATA, one per message, before messages are accepted again.
        self.data_replies: list[str] = []
        #: RCPT address -> the reply refusing it.
        self.refuse: dict[str, str] = {}
        self.quits = threading.Semaphore(0)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        """Accept the recipient unless it is scripted to be refused."""
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Record the message (or give the next scripted reply)."""
        if self.data_replies:
            return self.data_replies.pop(0)
        self.messages.append(Received(
            peer=session.peer, mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content), tls=session.ssl is not None,
            authenticated=session.authenticated,
        ))
        return "250 Message accepted"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        """Count QUITs, so a test can wait for the client to hang up."""
        self.quits.release()
        return "221 Bye"

    def wait_quit(self, timeout: float = 5.0) -> bool:
        """Block until a QUIT arrives (run it in a thread from async code)."""
        return self.quits.acquire(timeout=timeout)


class LoopbackController(aiosmtpd.controller.Controller):
    """aiosmtpd's threaded controller on 127.0.0.1 and an ephemeral port."""

    def __init__(self, handler: Any, **smtp_kwargs: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        super().__init__(handler, hostname="127.0.0.1", port=port, **smtp_kwargs)
        self.sessions: list[aiosmtpd.smtp.SMTP] = []

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)

    def factory(self) -> aiosmtpd.smtp.SMTP:
        """aiosmtpd's SMTP session, remembered so that stop() can wait for its end."""
        session = super().factory()
        self.sessions.append(session)
        return session

    def stop(self, no_assert: bool = False) -> None:
        """Give connections a moment to finish closing, then stop the server's loop.

        Stopping the loop while a connection closes would leave its transport half-closed,
        and the ResourceWarning at its garbage collection would fail some later test.
        """
        deadline = time.monotonic() + 2.0
        while (any(session.transport is not None for session in self.sessions)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        super().stop(no_assert)


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A threaded HTTP server on 127.0.0.1 answering with `handler`: its port; shut on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def smtp_server(**smtp_kwargs: Any) -> Iterator[tuple[LoopbackController, Recorder]]:
    """A running SMTP server and its recorder; stopped on exit."""
    recorder = Recorder()
    controller = LoopbackController(recorder, **smtp_kwargs)
    controller.start()
    try:
        yield controller, recorder
    finally:
        controller.stop()


def authenticator(username: str, password: str) -> Any:
    """An aiosmtpd authenticator accepting one user."""

    def check(server: Any, session: Any, envelope: Any, mechanism: str,
              auth_data: Any) -> aiosmtpd.smtp.AuthResult:
        ok = (isinstance(auth_data, aiosmtpd.smtp.LoginPassword)
              and auth_data.login == username.encode()
              and auth_data.password == password.encode())
        return aiosmtpd.smtp.AuthResult(success=ok, handled=False)  # False: send the 535

    return check


@dataclasses.dataclass
class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""

    ca: trustme.CA
    server: ssl.SSLContext

    @classmethod
    def make(cls) -> Tls:
        """A new CA and server context."""
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return cls(ca=ca, server=context)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound but never listening, held until exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def context(run_id: int = 1, now: float | None = None) -> actions.Context:
    """An action run's context, as the worker would build it."""
    now = time.time() if now is None else now
    event = models.Event(id="00000000-0000-0000-0000-000000000001", topic="user/test/run",
                         data=None, source="cli", created_at=now)
    run = models.Run(
        id=run_id, kind=models.RunKind.ACTION, state=models.RunState.STARTED, priority=3,
        run_at=now, event_id=event.id, task_name="test", action_type="test", options={},
        meta=None, perform_event=True, result=None, error=None, attempts=1, created_at=now,
        started_at=now, finished_at=None,
    )
    return actions.Context(run=run, event=event, now=now)
