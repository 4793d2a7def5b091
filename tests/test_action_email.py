"""The email action against a real aiosmtpd server on loopback, and the outbox on a real SQLite."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import gc
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runnerd import actions, config, errors
from runnerd.actions import email as email_action
from runnerd.actions import message as mail_action
from runnerd.store import db
from tests import helpers_servers

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def settings(port: int, **smtp: Any) -> config.Email:
    return config.Email(transport="smtp", sender="Runner Bot <runnerd@example.com>",
                        smtp=config.Smtp(host="127.0.0.1", port=port, timeout=5.0, **smtp))


def options(**extra: Any) -> dict[str, Any]:
    return {"to": "alice@example.com", "subject": "Hello", "body": "<p>Hi</p>", **extra}


def open_sockets_to(port: int) -> list[socket.socket]:
    """This process's sockets still open to 127.0.0.1:`port`."""
    found = []
    for obj in gc.get_objects():
        if (isinstance(obj, socket.socket) and obj.family == socket.AF_INET
                and obj.fileno() != -1):
            with contextlib.suppress(OSError):
                if obj.getpeername()[1] == port:
                    found.append(obj)
    return found


def parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


@pytest.fixture
def server() -> Iterator[tuple[helpers_servers.LoopbackController, helpers_servers.Recorder]]:
    with helpers_servers.smtp_server() as pair:
        yield pair


@pytest.fixture
async def executor(server: Any) -> AsyncIterator[email_action.EmailExecutor]:
    executor = email_action.EmailExecutor(settings(server[0].port))
    yield executor
    await executor.close()


# -- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("opts", "expected"), [
    ({"subject": "s", "body": "b"}, "'to' is missing"),
    (options(to="bob@"), "email: 'to' has an invalid address 'bob@'"),
    (options(to=["ok@example.com", "not an address"]), "invalid address 'not an address'"),
    (options(cc="a@example.com, b@"), "'cc' has an invalid address 'b@'"),
    (options(to=42), "'to' must be a list"),
    (options(subject=None), "'subject' is missing"),
    (options(subject="a\r\nBcc: evil@example.com"), "'subject' must not contain line breaks"),
    (options(body=["x"]), "'body' must be a string"),
    (options(reply_to="a@example.com, b@example.com"), "'reply_to' takes a single address"),
    (options(from_display_name="x\nBcc: y@z.com"), "must not contain line breaks"),
    (options(headers={"X-A": "1\r\nBcc: evil@example.com"}), "must not contain line breaks"),
    (options(headers={"Bcc": "evil@example.com"}), "may not set 'Bcc'"),
    (options(headers={"from": "x@example.com"}), "may not set 'from'"),
    (options(headers={"Bad Name": "x"}), "invalid header name"),
    (options(headers=["X-A"]), "'headers' must be an object"),
    (options(attachments={"a.bin": {"base64": "!!!"}}), "not valid base64"),
    (options(attachments={"a.pdf": {"pdf": {"html": "x"}}}),
     "attachment 'a.pdf': the 'pdf' file generator is not supported"),
    (options(attachments={"a.zip": {"zip": {"files": {"x": "1"}, "password": "p"}}}),
     "'zip' with a 'password' is not supported"),
    (options(attachments={"a.zip": {"zip": {"files": {"in.pdf": {"pdf": {}}}}}}),
     "attachment 'a.zip': zip file 'in.pdf': the 'pdf' file generator is not supported"),
    (options(attachments={"a": {"url": "ftp://x/y"}}), "'url' must be an http:// or https://"),
    (options(attachments={"a": {"csv": "x"}}), "unknown file generator 'csv'"),
    (options(attachments={"a": {"url": "http://x", "base64": "eA=="}}), "one file generator"),
    (options(tmplate="x"), "unknown option 'tmplate' (allowed: attachments, bcc, body, cc"),
    (options(template="default"), "'template' is not supported"),
    ("to: a@example.com", "options must be an object"),
])
def test_validate_rejects_with_one_clear_line(opts: Any, expected: str) -> None:
    executor = email_action.EmailExecutor(config.Email())
    with pytest.raises(errors.InvalidAction) as info:
        executor.validate(opts)
    assert expected in info.value.message
    assert "\n" not in info.value.message


def test_validate_accepts_mechanic_forms() -> None:
    executor = email_action.EmailExecutor(config.Email())
    executor.validate(options(
        to='"Doe, John" <john@example.com>, Ann <ann@example.com>,', cc=["c@example.com"],
        bcc="", reply_to="Support <help@example.com>", from_display_name="Shop",
        headers={"X-Priority": 1}, attachments={"a.txt": "x", "b.bin": {"base64": "AAE=\n"}},
        __perform_event=False, __note="control params are ignored",
    ))
    mail = mail_action.Mail(options(to="a@example.com, A@EXAMPLE.com", bcc=["b@example.com"]))
    assert mail.recipients == ["a@example.com", "b@example.com"]


def test_html_to_text_keeps_lines_and_unescapes() -> None:
    html = ("<html><head><style>p {color: red}</style></head><body>"
            "<p>Hello <b>Bob</b>,</p><p>Line one<br>Line two</p>"
            "<ul><li>A &amp; B</li><li>C &lt;3</li></ul><div>See <a href='https://x.test/o'>"
            "the order</a></div><script>alert(1)</script></body></html>")
    assert mail_action.html_to_text(html) == (
        "Hello Bob,\n\nLine one\nLine two\n\n- A & B\n- C <3\n\nSee the order (https://x.test/o)\n"
    )


def test_redact_returns_options_unchanged() -> None:
    opts = options()
    assert email_action.EmailExecutor(config.Email()).redact(opts) is opts


# -- SMTP -----------------------------------------------------------------------------------------

async def test_delivers_full_message(server: Any, executor: email_action.EmailExecutor) -> None:
    _, recorder = server
    result = await executor.perform({
        "to": ["alice@example.com", "Bob <bob@example.com>"],
        "cc": "carol@example.com",
        "bcc": "dave@example.com",
        "subject": "Order #1001 — ready",
        "body": "<p>Hello <b>Alice</b> &amp; Bob,</p><p>Line one<br>Line two</p>",
        "reply_to": "help@example.com",
        "from_display_name": "The Shop",
        "headers": {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"},
        "attachments": {"notes.txt": "plain text ✓", "logo.png": {
            "base64": base64.b64encode(PNG).decode()}},
    }, helpers_servers.context())

    assert result["recipients"] == ["alice@example.com", "bob@example.com",
                                    "carol@example.com", "dave@example.com"]
    assert "refused" not in result
    [received] = recorder.messages
    assert received.mail_from == "runnerd@example.com"
    assert received.rcpt_tos == result["recipients"]
    message = parse(received.data)
    assert message["Bcc"] is None and b"dave@" not in received.data
    assert message["Message-ID"] == result["message_id"]
    assert result["message_id"].endswith("@example.com>")
    assert message["From"].addresses[0].display_name == "The Shop"
    assert message["From"].addresses[0].addr_spec == "runnerd@example.com"
    assert [a.addr_spec for a in message["To"].addresses] == ["alice@example.com",
                                                             "bob@example.com"]
    assert message["Cc"] == "carol@example.com"
    assert message["Reply-To"] == "help@example.com"
    assert message["Subject"] == "Order #1001 — ready"
    assert message["Date"] is not None
    assert message["X-Campaign"] == "spring"
    assert message["List-Unsubscribe"] == "<mailto:u@example.com>"
    assert message.get_content_type() == "multipart/mixed"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().replace("\r\n", "\n") == "Hello Alice & Bob,\n\nLine one\nLine two\n"
    assert "<b>Alice</b>" in html.get_content()
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(attachments) == {"notes.txt", "logo.png"}
    assert attachments["notes.txt"].get_content() == "plain text ✓"
    assert attachments["logo.png"].get_content_type() == "image/png"
    assert attachments["logo.png"].get_content() == PNG


async def test_without_attachments_is_alternative(server: Any, executor: Any) -> None:
    await executor.perform(options(), helpers_servers.context())
    message = parse(server[1].messages[0].data)
    assert message.get_content_type() == "multipart/alternative"
    assert message["From"].addresses[0].display_name == "Runner Bot"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


async def test_some_recipients_refused_still_succeeds(server: Any, executor: Any) -> None:
    _, recorder = server
    recorder.refuse["ghost@example.com"] = "550 5.1.1 No such user"
    result = await executor.perform(options(to="alice@example.com, ghost@example.com"),
                                    helpers_servers.context())
    assert result["recipients"] == ["alice@example.com"]
    assert result["refused"] == {"ghost@example.com": "550 5.1.1 No such user"}
    assert recorder.messages[0].rcpt_tos == ["alice@example.com"]


async def test_every_recipient_refused_is_permanent(server: Any, executor: Any) -> None:
    _, recorder = server
    recorder.refuse["alice@example.com"] = "550 5.1.1 No such user"
    with pytest.raises(errors.ActionFailed) as info:
        await executor.perform(options(), helpers_servers.context())
    assert info.value.retryable is False
    assert "550" in info.value.message
    assert recorder.messages == []


async def test_5xx_on_data_is_permanent(server: Any, executor: Any) -> None:
    server[1].data_replies.append("554 5.6.0 Message rejected")
    with pytest.raises(errors.ActionFailed) as info:
        await executor.perform(options(), helpers_servers.context())
    assert info.value.retryable is False


async def test_451_is_retried_until_accepted_once(server: Any, executor: Any) -> None:
    _, recorder = server
    recorder.data_replies += ["451 4.3.0 Try again later"] * 2
    ctx = helpers_servers.context()
    for _ in range(2):
        with pytest.raises(errors.ActionFailed) as info:
            await executor.perform(options(), ctx)
        assert info.value.retryable is True
        assert "451" in info.value.message
    result = await executor.perform(options(), ctx)
    assert len(recorder.messages) == 1
    assert result["recipients"] == ["alice@example.com"]


async def test_connection_refused_is_transient() -> None:
    with helpers_servers.refused_port() as port:
        executor = email_action.EmailExecutor(settings(port))
        with pytest.raises(errors.ActionFailed) as info:
            await executor.perform(options(), helpers_servers.context())
        await executor.close()
    assert info.value.retryable is True


async def test_burst_reuses_one_connection(server: Any, executor: Any) -> None:
    _, recorder = server
    await executor.perform(options(subject="first"), helpers_servers.context())
    await asyncio.gather(*(executor.perform(options(subject=f"n{i}"), helpers_servers.context())
                           for i in range(4)))
    assert len(recorder.messages) == 5
    assert len({m.peer for m in recorder.messages}) == 1


async def test_idle_connection_is_closed_then_reopened(server: Any) -> None:
    _, recorder = server
    executor = email_action.EmailExecutor(settings(server[0].port), idle_seconds=0.05)
    try:
        await executor.perform(options(), helpers_servers.context())
        assert await asyncio.to_thread(recorder.wait_quit, 5.0), "no QUIT after the idle delay"
        await executor.perform(options(), helpers_servers.context())
    finally:
        await executor.close()
    assert len({m.peer for m in recorder.messages}) == 2


async def test_close_sends_quit(server: Any) -> None:
    _, recorder = server
    executor = email_action.EmailExecutor(settings(server[0].port))
    await executor.perform(options(), helpers_servers.context())
    await executor.close()
    assert open_sockets_to(server[0].port) == []
    assert await asyncio.to_thread(recorder.wait_quit, 5.0)


# -- STARTTLS and AUTH ----------------------------------------------------------------------------

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def tls() -> helpers_servers.Tls:
    return helpers_servers.Tls.make()


@pytest.fixture
def secure_server(tls: helpers_servers.Tls) -> Iterator[Any]:
    with helpers_servers.smtp_server(
        tls_context=tls.server, require_starttls=True, auth_required=True,
        authenticator=helpers_servers.authenticator("mailer", PASSWORD),
    ) as pair:
        yield pair


async def test_starttls_and_auth(secure_server: Any) -> None:
    controller, recorder = secure_server
    executor = email_action.EmailExecutor(settings(
        controller.port, username="mailer", password=PASSWORD, starttls="always", verify=False))
    try:
        result = await executor.perform(options(), helpers_servers.context())
    finally:
        await executor.close()
    [received] = recorder.messages
    assert received.tls and received.authenticated
    assert PASSWORD not in json.dumps(result)


async def test_untrusted_certificate_is_permanent(secure_server: Any) -> None:
    executor = email_action.EmailExecutor(settings(
        secure_server[0].port, username="mailer", password=PASSWORD, verify=True))
    with pytest.raises(errors.ActionFailed) as info:
        await executor.perform(options(), helpers_servers.context())
    await executor.close()
    assert open_sockets_to(secure_server[0].port) == []  # a failed session is closed, not half-closed
    assert info.value.retryable is False
    assert "certificate" in info.value.message
    assert secure_server[1].messages == []


async def test_wrong_password_is_permanent_and_not_echoed(secure_server: Any) -> None:
    wrong = "not-the-password-123"
    executor = email_action.EmailExecutor(settings(
        secure_server[0].port, username="mailer", password=wrong, verify=False))
    with pytest.raises(errors.ActionFailed) as info:
        await executor.perform(options(), helpers_servers.context())
    await executor.close()
    assert open_sockets_to(secure_server[0].port) == []  # a failed session is closed, not half-closed
    assert info.value.retryable is False
    assert "authentication failed" in info.value.message
    assert wrong not in info.value.message


async def test_starttls_always_without_offer_is_permanent(server: Any) -> None:
    executor = email_action.EmailExecutor(settings(server[0].port, starttls="always"))
    with pytest.raises(errors.ActionFailed) as info:
        await executor.perform(options(), helpers_servers.context())
    await executor.close()
    assert open_sockets_to(server[0].port) == []  # a failed session is closed, not half-closed
    assert info.value.retryable is False
    assert "STARTTLS" in info.value.message


# -- outbox ---------------------------------------------------------------------------------------

async def test_outbox_writes_the_message_in_the_run_transaction(tmp_path: Path) -> None:
    executor = email_action.EmailExecutor(config.Email(
        transport="outbox", sender="runnerd@example.com"))
    database = db.Database(tmp_path / "runnerd.db")
    await database.open()
    try:
        await database.migrate()
        deferred = await executor.perform(
            options(cc="carol@example.com", bcc=["dave@example.com"], subject="Stored"),
            helpers_servers.context(run_id=7))
        assert isinstance(deferred, actions.Deferred)
        result = await database.write(deferred.apply)
        rows = await database.read(lambda tx: tx.conn.execute("SELECT * FROM outbox").fetchall())
    finally:
        await database.close()
        await executor.close()
    [row] = rows
    recipients = ["alice@example.com", "carol@example.com", "dave@example.com"]
    assert result["recipients"] == recipients
    assert json.loads(row["recipients"]) == recipients
    assert (row["sender"], row["subject"], row["run_id"]) == ("runnerd@example.com", "Stored", 7)
    message = email.message_from_string(row["message"], policy=email.policy.default)
    assert message["Message-ID"] == result["message_id"]
    assert message["Bcc"] is None
    assert message.get_body(("plain",)).get_content() == "Hi\n"


def test_a_subject_captured_with_line_breaks_is_trimmed() -> None:
    # {% capture subject %}\n  Order ready\n{% endcapture %}: Mechanic sends "Order ready"
    mail = mail_action.Mail(options(subject="\n  Order ready\n", from_display_name="\r\nShop \n"))
    assert (mail.subject, mail.display_name) == ("Order ready", "Shop")
    with pytest.raises(errors.InvalidAction, match="must not contain line breaks"):
        mail_action.Mail(options(subject="\nOrder\nready\n"))
