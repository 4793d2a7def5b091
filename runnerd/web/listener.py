"""The HTTP listener's runner: aiohttp's `AppRunner`, with limits on slow and idle clients.

aiohttp closes a connection that has no request under way `keepalive_timeout` seconds after it
opened or after its last response (`listen.keepalive_timeout`), but once a request's first bytes
arrive it waits for the rest of its headers for ever (a slow-loris client holds the connection
by sending a byte now and then). `_Protocol` adds that limit (`listen.header_timeout`): a timer
armed by the first bytes of a request and cancelled when its headers are complete, at O(1) per
chunk received. Bodies are bounded where they are read (`webhook.read_body`,
`listen.body_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web, web_protocol

from runnerd import config

logger = logging.getLogger(__name__)


class _Protocol(web_protocol.RequestHandler):
    """aiohttp's HTTP/1 protocol with a deadline on each request's headers."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        # aiohttp's `_waiter` is set while it waits for the next request's headers, and a
        # parsed request lands in `_messages` as soon as its headers are complete.
        between_requests = self._waiter is not None
        super().data_received(data)
        if not between_requests:
            return
        if self._messages:
            self._cancel_deadline()
        elif self._header_deadline is None:
            self._header_deadline = asyncio.get_running_loop().call_later(
                self._header_timeout, self._headers_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._waiter is None or self._messages or self.transport is None:
            return  # the headers were complete after all
        logger.info("closed a connection from %s: its request headers took over %g s",
                    self.transport.get_extra_info("peername"), self._header_timeout,
                    extra={"action": "header_timeout"})
        self.force_close()


class _Server(web.Server):
    """aiohttp's low-level server, making `_Protocol`s."""

    def __init__(self, made: web.Server, listen: config.Listen) -> None:
        super().__init__(made.request_handler, request_factory=made.request_factory,
                         handler_cancellation=made.handler_cancellation)
        self._listen = listen

    def __call__(self) -> web_protocol.RequestHandler:
        return _Protocol(self, loop=asyncio.get_running_loop(), access_log=None,
                         header_timeout=self._listen.header_timeout,
                         keepalive_timeout=self._listen.keepalive_timeout)


class Runner(web.AppRunner):
    """`AppRunner(handle_signals=False)` serving `app` with the timeouts of `listen`."""

    def __init__(self, app: web.Application, listen: config.Listen) -> None:
        super().__init__(app, handle_signals=False, shutdown_timeout=5.0)
        self._listen = listen

    async def _make_server(self) -> web.Server:
        # aiohttp's own starts the application and builds its server; ours takes its handler
        return _Server(await super()._make_server(), self._listen)
