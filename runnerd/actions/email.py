"""The email action: Mechanic's options, one MIME message, delivery over SMTP or into the outbox.

The message is multipart/alternative (a text/plain part derived from the HTML, then the HTML),
wrapped in multipart/mixed when there are attachments. Bcc goes into the envelope only.

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
import base64
import binascii
import contextlib
import email.headerregistry
import email.message
import email.policy
import email.utils
import html.parser
import logging
import mimetypes
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiosmtplib

from runnerd import actions, config, errors, models

if TYPE_CHECKING:
    from runnerd import db

logger = logging.getLogger(__name__)

OPTIONS = frozenset({"to", "subject", "body", "cc", "bcc", "reply_to", "from_display_name",
                     "headers", "attachments"})
#: Headers the executor writes itself; `headers` may not set them.
RESERVED_HEADERS = frozenset({
    "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "return-path", "received", "resent-from", "resent-to", "resent-cc", "resent-bcc",
})
#: An idle SMTP connection is closed after this many seconds.
IDLE_SECONDS = 30.0

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' (RFC 5322 ftext)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COMMA = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')  # a comma followed by balanced quotes
_Address = email.headerregistry.Address


def _invalid(message: str) -> errors.InvalidAction:
    return errors.InvalidAction(f"email: {message}")


def _split(value: str) -> list[str]:
    """Split a comma string on the commas outside double quotes; drop empty items."""
    return [p.strip() for p in _COMMA.split(value) if p.strip()]


def parse_address(text: str, key: str) -> _Address:
    """`addr@host` or `Name <addr@host>` → Address; InvalidAction naming `key` otherwise."""
    match = re.fullmatch(r'(?:"?(?P<name>[^"<>]*?)"?\s*<(?P<angle>[^<>]*)>|(?P<bare>[^<>\s]+))',
                         text.strip())
    try:
        if match is None or _CONTROL.search(text):
            raise ValueError(text)
        spec = match["angle"] if match["angle"] is not None else match["bare"]
        address = _Address(display_name=(match["name"] or "").strip(), addr_spec=spec.strip())
        if not address.username or not address.domain or any(c.isspace() for c in spec.strip()):
            raise ValueError(text)
    except Exception:  # the stdlib parser raises IndexError too on inputs such as "bob@"
        raise _invalid(f"{key!r} has an invalid address {text!r}") from None
    return address


def _addresses(options: Mapping[str, Any], key: str) -> list[_Address]:
    value = options.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        items = _split(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [p for v in value for p in _split(v)]
    else:
        raise _invalid(f"{key!r} must be a list of addresses or a comma-separated string")
    return [parse_address(item, key) for item in items]


def _text(options: Mapping[str, Any], key: str, *, header: bool) -> str:
    value = options.get(key)
    if value is None:
        raise _invalid(f"{key!r} is missing")
    if not isinstance(value, str):
        raise _invalid(f"{key!r} must be a string, got {type(value).__name__}")
    if header and ("\r" in value or "\n" in value):
        raise _invalid(f"{key!r} must not contain line breaks")
    return value


def _headers(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise _invalid("'headers' must be an object of name: value")
    out = []
    for name, item in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise _invalid(f"'headers' has an invalid header name {name!r}")
        if name.lower() in RESERVED_HEADERS:
            raise _invalid(f"'headers' may not set {name!r} (use the email options instead)")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _invalid(f"'headers': the value of {name!r} must be a string")
        if _CONTROL.search(str(item).replace("\t", " ")):
            raise _invalid(f"'headers': the value of {name!r} must not contain line breaks")
        out.append((name, str(item)))
    return out


def _attachments(value: Any) -> list[tuple[str, str | bytes]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise _invalid("'attachments' must be an object of filename: content")
    out: list[tuple[str, str | bytes]] = []
    for name, content in value.items():
        if not isinstance(name, str) or not name.strip() or _CONTROL.search(name):
            raise _invalid(f"'attachments' has an invalid filename {name!r}")
        if isinstance(content, str):
            out.append((name, content))
        elif isinstance(content, Mapping) and set(content) == {"base64"} and isinstance(
                content["base64"], str):
            try:
                data = base64.b64decode("".join(content["base64"].split()), validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(f"attachment {name!r}: 'base64' is not valid base64") from None
            out.append((name, data))
        else:
            raise _invalid(f"attachment {name!r} must be a string or {{\"base64\": \"...\"}} "
                           "(file generators are not supported)")
    return out


class Mail:
    """Validated email options, ready to become a message."""

    def __init__(self, options: Any) -> None:
        if not isinstance(options, Mapping):
            raise _invalid("options must be an object")
        unknown = sorted(k for k in options if not (isinstance(k, str) and k.startswith("__"))
                         and k not in OPTIONS)
        if unknown:
            if "template" in unknown:
                raise _invalid("option 'template' is not supported (runnerd has no templates)")
            raise _invalid(f"unknown option {unknown[0]!r} (allowed: {', '.join(sorted(OPTIONS))})")
        self.to = _addresses(options, "to")
        if not self.to:
            raise _invalid("'to' is missing (at least one address)")
        self.cc = _addresses(options, "cc")
        self.bcc = _addresses(options, "bcc")
        reply_to = _addresses(options, "reply_to")
        if len(reply_to) > 1:
            raise _invalid("'reply_to' takes a single address")
        self.reply_to = reply_to[0] if reply_to else None
        self.subject = _text(options, "subject", header=True)
        self.body = _text(options, "body", header=False)
        self.display_name = (_text(options, "from_display_name", header=True)
                             if options.get("from_display_name") is not None else None)
        self.headers = _headers(options.get("headers"))
        self.attachments = _attachments(options.get("attachments"))

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients: to + cc + bcc, each once, in order."""
        seen: dict[str, str] = {}
        for address in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(address.addr_spec.lower(), address.addr_spec)
        return list(seen.values())

    def message(self, sender: _Address, now: float) -> email.message.EmailMessage:
        """The MIME message (no Bcc header)."""
        msg = email.message.EmailMessage(policy=email.policy.default)
        name = self.display_name if self.display_name is not None else sender.display_name
        msg["From"] = _Address(display_name=name, username=sender.username, domain=sender.domain)
        msg["To"] = self.to
        if self.cc:
            msg["Cc"] = self.cc
        if self.reply_to is not None:
            msg["Reply-To"] = self.reply_to
        msg["Subject"] = self.subject
        msg["Date"] = email.utils.formatdate(now, usegmt=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=sender.domain)
        for key, value in self.headers:
            msg[key] = value
        msg.set_content(html_to_text(self.body))
        msg.add_alternative(self.body, subtype="html")
        for filename, content in self.attachments:
            # Sent as bytes either way: set_content(str) would append a newline to the file.
            default = "text/plain" if isinstance(content, str) else "application/octet-stream"
            maintype, _, subtype = (mimetypes.guess_type(filename)[0] or default).partition("/")
            data = content.encode() if isinstance(content, str) else content
            params = {"charset": "utf-8"} if isinstance(content, str) and maintype == "text" else {}
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename,
                               params=params)
        return msg


#: Tag -> (text at its start, text at its end) in the text/plain part.
_BREAKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul",
                     "ol", "dl"), ("\n\n", "\n\n")),
    **dict.fromkeys(("div", "tr", "hr", "dt", "dd", "section", "article", "header", "footer"),
                    ("\n", "\n")),
    "br": ("\n", ""), "li": ("\n- ", ""),
}
_HIDDEN = frozenset({"style", "script", "head", "title"})


class _TextParser(html.parser.HTMLParser):
    """HTML → readable text: blocks become line breaks, links keep their target."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in _HIDDEN
        self.parts.append(_BREAKS.get(tag, ("", ""))[0])
        if tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.parts)))

    def handle_endtag(self, tag: str) -> None:
        self.hidden = max(0, self.hidden - (tag in _HIDDEN))
        self.parts.append(_BREAKS.get(tag, ("", ""))[1])
        if tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.parts[start:]).strip()
            if href and not href.startswith("#") and label and label != href:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_to_text(body: str) -> str:
    """The text/plain alternative of an HTML body."""
    parser = _TextParser()
    parser.feed(body)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


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

    def __init__(self, settings: config.Email, *, idle_seconds: float = IDLE_SECONDS) -> None:
        self.settings = settings
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
        Mail(options)

    def redact(self, options: Any) -> Any:
        """Email options hold no secrets."""
        return options

    async def perform(self, options: Any, ctx: actions.Context) -> Any:
        """Build the message, then send it (smtp) or return a Deferred outbox write."""
        try:
            mail = Mail(options)
            sender = parse_address(self.settings.sender, "email.from")
        except errors.InvalidAction as exc:
            raise errors.ActionFailed(exc.message) from None
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

    def _outbox(self, mail: Mail, msg: email.message.EmailMessage,
                sender: _Address, ctx: actions.Context) -> actions.Deferred:
        result = {"message_id": str(msg["Message-ID"]), "recipients": mail.recipients}
        row = {"created_at": ctx.now, "sender": sender.addr_spec,
               "recipients": models.dumps(mail.recipients), "subject": mail.subject,
               "message": msg.as_string(), "run_id": ctx.run.id}

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
