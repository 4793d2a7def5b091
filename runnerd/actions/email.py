"""The email action's delivery: over one reused SMTP connection, or into the outbox.

The options and the message they make are `runnerd.actions.mail`'s.

SMTP failures are classified by exception type (`_failure`), never by message text:

    transient (retryable)                       permanent
    ------------------------------------------  ----------------------------------------------
    SMTP 4xx reply (SMTPResponseException)      SMTP 5xx reply, every recipient refused (5xx)
    SMTPServerDisconnected, SMTPConnectError    SMTPAuthenticationError
    SMTPTimeoutError (connect or read)          ssl.SSLCertVerificationError (anywhere in chain)
    OSError, TimeoutError (refused, reset, DNS) STARTTLS required but not offered, other
                                                SMTPException (no AUTH, no SMTPUTF8), bad options
"""

from __future__ import annotations

import asyncio
import contextlib
import email.headerregistry
import email.message
import logging
import ssl
from typing import TYPE_CHECKING, Any

import aiosmtplib

from runnerd import actions, config, errors
from runnerd.actions import message as mail_

if TYPE_CHECKING:
    from runnerd.store import db

logger = logging.getLogger(__name__)

#: An idle SMTP connection is closed after this many seconds.
IDLE_SECONDS = 30.0


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _NoStartTLS(aiosmtplib.SMTPException):
    """STARTTLS is required by the configuration but the server does not offer it."""


def _failure(exc: BaseException, where: str) -> errors.ActionFailed:
    """Classify an SMTP-side exception by its type."""
    if isinstance(exc, _NoStartTLS):
        return errors.ActionFailed(f"email: {exc.message}")
    if (cert := _cert_error(exc)) is not None:
        reason = cert.verify_message or "certificate verification failed"
        return errors.ActionFailed(f"email: TLS certificate of {where} rejected: {reason}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return errors.ActionFailed(f"email: SMTP authentication failed at {where}: "
                                   f"{exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        refused = ", ".join(f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients)
        return errors.ActionFailed(f"email: every recipient was refused: {refused}",
                                   retryable=any(400 <= c < 500 for c in codes))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return errors.ActionFailed(f"email: {where} answered {exc.code} {exc.message}",
                                   retryable=400 <= exc.code < 500)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError
                  | aiosmtplib.SMTPTimeoutError | OSError | TimeoutError):
        return errors.ActionFailed(f"email: cannot deliver through {where}: {exc}", retryable=True)
    return errors.ActionFailed(f"email: cannot deliver through {where}: {exc}")


class EmailExecutor:
    """Sends email actions through one reused SMTP connection, or stores them in the outbox."""

    type = "email"
    perform_event = True
    inline = False

    def __init__(self, settings: config.Email, *, idle_seconds: float = IDLE_SECONDS,
                 fetch: mail_.Fetch | None = None) -> None:
        self.settings = settings
        #: downloads `url` file generators (the http action's guarded client); None: refused
        self.fetch = fetch
        self.idle_seconds = idle_seconds
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task[None] | None = None
        #: Sockets of the connections opened, until they are seen closed: close() waits for
        #: them, because closing a (TLS) connection finishes on later turns of the loop.
        self._sockets: list[Any] = []

    def validate(self, options: Any) -> None:
        """Raise errors.InvalidAction naming what is wrong with `options`."""
        mail_.Mail(options)

    def redact(self, options: Any) -> Any:
        """Email options hold no secrets."""
        return options

    async def perform(self, options: Any, ctx: actions.Context) -> Any:
        """Build the message, then send it (smtp) or return a Deferred outbox write."""
        try:
            mail = mail_.Mail(options)
            sender = mail_.parse_address(self.settings.sender, "email.from")
        except errors.InvalidAction as exc:
            raise errors.ActionFailed(exc.message) from None
        await mail.generate(self.fetch)
        msg = mail.message(sender, ctx.now)
        message_id = str(msg["Message-ID"])
        if self.settings.transport == "outbox":
            return self._outbox(mail, msg, sender, ctx)
        refused = await self._send(msg, sender.addr_spec, mail.recipients)
        accepted = [r for r in mail.recipients if r not in refused]
        logger.info("email %s sent to %d recipient(s)", message_id, len(accepted),
                    extra={"action": "email_sent", "run_id": ctx.run.id})
        result: dict[str, Any] = {"message_id": message_id, "recipients": accepted}
        if refused:
            result["refused"] = refused
        return result

    def _outbox(self, mail: mail_.Mail, msg: email.message.EmailMessage,
                sender: email.headerregistry.Address, ctx: actions.Context) -> actions.Deferred:
        result = {"message_id": str(msg["Message-ID"]), "recipients": mail.recipients}
        row = mail.outbox_row(sender, msg, ctx.now, ctx.run.id)

        def apply(tx: db.Tx) -> dict[str, Any]:
            tx.execute("insert_outbox", row)
            return result

        return actions.Deferred(apply=apply)

    async def _send(self, msg: email.message.EmailMessage, sender: str,
                    recipients: list[str]) -> dict[str, str]:
        """Send on the shared connection; {refused address: "code message"}."""
        async with self._lock:
            self._cancel_idle()
            try:
                refused = await self._deliver(msg, sender, recipients)
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
                # The session stays usable: aiosmtplib sent RSET (and closes it itself on 421).
                raise self._failure(exc) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
                self._drop()
                raise self._failure(exc) from exc
            except BaseException:
                self._drop()
                raise
            finally:
                self._arm_idle()
        return {addr: f"{resp.code} {resp.message}" for addr, resp in refused.items()}

    async def _deliver(self, msg: email.message.EmailMessage, sender: str,
                       recipients: list[str]) -> dict[str, aiosmtplib.SMTPResponse]:
        client = self._client
        if client is not None and client.is_connected:
            try:
                refused, _ = await client.send_message(msg, sender=sender, recipients=recipients)
                return refused
            except aiosmtplib.SMTPServerDisconnected:
                # The server dropped the idle connection before we noticed: one more try, on a
                # fresh connection (at-least-once delivery allows it).
                self._drop()
        client = await self._connect()
        refused, _ = await client.send_message(msg, sender=sender, recipients=recipients)
        return refused

    def _failure(self, exc: BaseException) -> errors.ActionFailed:
        smtp = self.settings.smtp
        failure = _failure(exc, f"SMTP server {smtp.host}:{smtp.port}")
        message = " ".join(failure.message.split())  # multi-line SMTP replies: one line
        if smtp.password and len(smtp.password) >= 4:  # never echo the password back
            message = message.replace(smtp.password, "[redacted]")
        failure = errors.ActionFailed(message, retryable=failure.retryable)
        logger.warning("%s", failure.message, extra={"action": "email_failed"})
        return failure

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = self.settings.smtp
        client = aiosmtplib.SMTP(hostname=smtp.host, port=smtp.port, timeout=smtp.timeout,
                                 use_tls=smtp.tls, start_tls=False, validate_certs=smtp.verify)
        self._drop()
        try:
            await client.connect()
            self._track(client)
            if not smtp.tls and smtp.starttls != "never":
                await client.ehlo()
                if client.supports_extension("starttls"):
                    await client.starttls()
                elif smtp.starttls == "always":
                    raise _NoStartTLS(f"SMTP server {smtp.host}:{smtp.port} does not offer "
                                      "STARTTLS (email.smtp.starttls is 'always')")
            if smtp.username:
                await client.login(smtp.username, smtp.password or "")
        except BaseException:
            client.close()
            raise
        logger.debug("connected to SMTP server %s:%s", smtp.host, smtp.port,
                     extra={"action": "smtp_connected"})
        self._client = client
        return client

    def _track(self, client: aiosmtplib.SMTP) -> None:
        self._sockets = [sock for sock in self._sockets if sock.fileno() != -1]
        if client.transport is not None:
            self._sockets.append(client.transport.get_extra_info("socket"))

    async def _wait_closed(self, timeout: float = 1.0) -> None:
        # No public future says a transport is gone; its socket's fileno() turns -1 then.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(sock.fileno() != -1 for sock in self._sockets) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._sockets = [sock for sock in self._sockets if sock.fileno() != -1]

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _cancel_idle(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _arm_idle(self) -> None:
        self._cancel_idle()
        if self._client is not None:
            loop = asyncio.get_running_loop()
            self._idle_handle = loop.call_later(self.idle_seconds, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_handle = None
        if self._idle_task is None or self._idle_task.done():
            self._idle_task = asyncio.get_running_loop().create_task(
                self._disconnect(), name="smtp-idle-close")

    async def _disconnect(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                if client.is_connected:
                    await client.quit()
            client.close()

    async def close(self) -> None:
        """QUIT and close the SMTP connection, if one is open, and wait until it is closed."""
        self._cancel_idle()
        if self._idle_task is not None:
            await self._idle_task
            self._idle_task = None
        await self._disconnect()
        await self._wait_closed()
