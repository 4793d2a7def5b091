"""An email action's options, validated, and the MIME message they make (Mechanic's options).

The message is multipart/alternative (a text/plain part derived from the HTML, then the HTML),
wrapped in multipart/mixed when there are attachments. Bcc goes into the envelope only.

Attachments map file names to Mechanic's file generators: a string (plaintext), `{"base64":
…}`, `{"url": …}` (downloaded when the action runs, through the http action's guarded client)
and `{"zip": {"files": {…}}}` (its own file names and generators, nested). Each generated file
is at most MAX_FILE_BYTES, as in Mechanic. `pdf` (HTML rendered by a browser) and a zip
`password` (ZipCrypto) are refused at validation with a line that says so.
"""

from __future__ import annotations

import base64
import binascii
import email.headerregistry
import email.message
import email.policy
import email.utils
import html.parser
import io
import mimetypes
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from runnerd import errors, models

OPTIONS = frozenset({"to", "subject", "body", "cc", "bcc", "reply_to", "from_display_name",
                     "headers", "attachments"})
#: Headers the message gets from the other options; `headers` may not set them.
RESERVED_HEADERS = frozenset({
    "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "return-path", "received", "resent-from", "resent-to", "resent-cc", "resent-bcc",
})

_HEADER_NAME = re.compile(r"^[!-9;-~]+\Z")  # printable ASCII except ':' (RFC 5322 ftext)
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
    if header:  # Mechanic trims a header captured with line breaks around it
        value = value.strip()
        if "\r" in value or "\n" in value:
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


#: The most one generated file (an attachment, a downloaded one, a zip) may hold: Mechanic's 20 MB.
MAX_FILE_BYTES = 20 * 1024 * 1024
#: Downloads a URL (at most `limit` bytes); raises errors.ActionFailed.
Fetch = Callable[[str, int], Awaitable[bytes]]


class Url:
    """A `{"url": …}` file generator: the file at that URL, downloaded when the action runs."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url


class Zip:
    """A `{"zip": {"files": …}}` file generator: its files, each a generator, in one archive."""

    __slots__ = ("files",)

    def __init__(self, files: list[tuple[str, Generated]]) -> None:
        self.files = files


Generated = str | bytes | Url | Zip


def _attachments(value: Any) -> list[tuple[str, Generated]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise _invalid("'attachments' must be an object of filename: content")
    return _files(value, "attachment")


def _files(value: Mapping[Any, Any], what: str) -> list[tuple[str, Generated]]:
    out: list[tuple[str, Generated]] = []
    for name, content in value.items():
        if not isinstance(name, str) or not name.strip() or _CONTROL.search(name):
            raise _invalid(f"{what}s: invalid filename {name!r}")
        out.append((name, _generator(content, f"{what} {name!r}")))
    return out


def _generator(content: Any, where: str) -> Generated:
    """A file generator (Mechanic's core/actions/file-generators) as runnerd performs it."""
    if isinstance(content, str):
        return content
    if not isinstance(content, Mapping) or len(content) != 1:
        raise _invalid(f"{where} must be a string or one file generator such as "
                       '{"base64": "..."}, {"url": "..."} or {"zip": {"files": {...}}}')
    ((kind, options),) = content.items()
    if kind == "base64" and isinstance(options, str):
        try:
            data = base64.b64decode("".join(options.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"{where}: 'base64' is not valid base64") from None
        return _sized(data, where)
    if kind == "url" and isinstance(options, str):
        if not re.match(r"(?i)^https?://[^/\s]", options):
            raise _invalid(f"{where}: 'url' must be an http:// or https:// URL")
        return Url(options)
    if kind == "zip" and isinstance(options, Mapping):
        if options.get("password") is not None:
            raise _invalid(f"{where}: 'zip' with a 'password' is not supported (runnerd cannot "
                           "encrypt ZIP files)")
        extra = sorted(str(k) for k in options if k not in ("files", "password"))
        files = options.get("files")
        if extra or not isinstance(files, Mapping):
            raise _invalid(f"{where}: 'zip' takes {{\"files\": {{filename: generator}}}}")
        return Zip(_files(files, f"{where}: zip file"))
    if kind == "pdf":
        raise _invalid(f"{where}: the 'pdf' file generator is not supported (it renders HTML "
                       "in a browser, which runnerd does not run)")
    if kind in ("base64", "url", "zip"):
        raise _invalid(f"{where}: wrong options for the {kind!r} file generator")
    raise _invalid(f"{where}: unknown file generator {str(kind)[:40]!r}")


def _sized(data: bytes, where: str) -> bytes:
    if len(data) > MAX_FILE_BYTES:
        raise errors.ActionFailed(f"email: {where} is over {MAX_FILE_BYTES // 1048576} MB")
    return data


async def _generate(content: Generated, where: str, fetch: Fetch | None) -> str | bytes:
    """The file a generator makes: downloads and archives made now."""
    if isinstance(content, str | bytes):
        return content
    if isinstance(content, Url):
        if fetch is None:
            raise errors.ActionFailed(f"email: {where}: no HTTP client to download {content.url}")
        return _sized(await fetch(content.url, MAX_FILE_BYTES), where)
    import zipfile  # noqa: PLC0415 - half a MiB of idle RSS for a rarely used generator

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, item in content.files:
            data = await _generate(item, f"{where}: {name!r}", fetch)
            archive.writestr(name, data.encode() if isinstance(data, str) else data)
    return _sized(buffer.getvalue(), where)


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

    async def generate(self, fetch: Fetch | None) -> None:
        """Make the attachments' files now: downloads (`fetch`) and zip archives."""
        self.attachments = [(name, await _generate(content, f"attachment {name!r}", fetch))
                            for name, content in self.attachments]

    def message(self, sender: _Address, now: float) -> email.message.EmailMessage:
        """The MIME message (no Bcc header); `generate` first when attachments download."""
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
            if isinstance(content, Url | Zip):
                raise errors.ActionFailed(f"email: attachment {filename!r} was not generated")
            # Sent as bytes either way: set_content(str) would append a newline to the file.
            default = "text/plain" if isinstance(content, str) else "application/octet-stream"
            maintype, _, subtype = (mimetypes.guess_type(filename)[0] or default).partition("/")
            data = content.encode() if isinstance(content, str) else content
            params = {"charset": "utf-8"} if isinstance(content, str) and maintype == "text" else {}
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename,
                               params=params)
        return msg

    def outbox_row(self, sender: _Address, msg: email.message.EmailMessage, now: float,
                   run_id: int | None) -> dict[str, Any]:
        """The `outbox` row that stores `msg` instead of sending it."""
        return {"created_at": now, "sender": sender.addr_spec,
                "recipients": models.dumps(self.recipients), "subject": self.subject,
                "message": msg.as_string(), "run_id": run_id}


#: Tag -> (text at its start, text at its end) in the text/plain part.
_BREAKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul",
                     "ol", "dl"), ("\n\n", "\n\n")),
    **dict.fromkeys(("div", "hr", "dt", "dd", "section", "article", "header", "footer"),
                    ("\n", "\n")),
    "br": ("\n", ""), "li": ("\n- ", ""), "tr": ("\n", ""),
}
_HIDDEN = frozenset({"style", "script", "head", "title"})


#: Between two cells of a table row in the text/plain part.
CELL_SEPARATOR = " | "


class _TextParser(html.parser.HTMLParser):
    """HTML → readable text: blocks become line breaks, a table row's cells stay apart, links
    keep their target."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.links: list[tuple[str | None, int]] = []
        self.cells = 0  #: cells seen in the current table row

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in _HIDDEN
        if tag == "tr":
            self.cells = 0
        elif tag in ("td", "th"):
            self.parts.append(CELL_SEPARATOR if self.cells else "")
            self.cells += 1
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
