"""Webhooks: verify, parse, group-commit, 204; and reading a request body within the limits.

The listener is one part of the daemon's loop (`AppRunner(handle_signals=False)` + `TCPSite`),
never `run_app`; web/app.py builds the application. Handlers validate, hand the event to the
ingest queue and answer once it is committed; nothing is stored for a request that gets an error.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from typing import Any

from aiohttp import web

from runnerd import config, errors, models
from runnerd.queue import runs
from runnerd.web import context

logger = logging.getLogger(__name__)

VIEW = web.AppKey("webhooks", context.Webhooks)
SIGNATURE_HEADER = "X-Runnerd-Signature"
#: Optional, with a signature: Unix seconds, signed as `<timestamp>.<body>` (replay protection).
TIMESTAMP_HEADER = "X-Runnerd-Timestamp"
#: Sent with a webhook refused for back-pressure (`listen.max_due_runs`): try again in a second.
BACKLOG_RETRY_AFTER = {"Retry-After": "1"}


def add_routes(app: web.Application, view: context.Webhooks) -> None:
    """Register /webhooks/{name}."""
    app[VIEW] = view
    app.router.add_route("*", "/webhooks/{name}", handle_webhook)


#: Sent with every 503 (the database unavailable, or runnerd stopping): when to try again, in
#: seconds (about the time a lost database connection takes to be re-opened: store.pg.RETRY_MAX).
RETRY_AFTER = {"Retry-After": "5"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers=RETRY_AFTER if status == 503 else None)


class BodyRefused(errors.InvalidInput):
    """The request body was refused with `status`: 413 too large, 400 unreadable, 408 too slow,
    499 (nginx's "client closed request", which nobody receives) the client went away."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request, listen: config.Listen) -> bytes:
    """The body; BodyRefused (413) over `listen.max_body_bytes`, (400) when it cannot be read,
    (408) when it takes over `listen.body_timeout`, (499) when the client disconnects before
    sending it all (logged as one INFO line).

    aiohttp inflates `Content-Encoding: gzip`/`deflate` bodies as it reads them, so the limit
    applies to the inflated size (a gzip bomb gets 413) and a body that does not inflate is
    refused here, instead of escaping the handler as a 500 with a traceback in the log.
    """
    limit = listen.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyRefused(413, f"body over {limit} bytes")
    try:
        if request.content.is_eof():  # received whole (a small body comes with its headers)
            return await request.read()
        async with asyncio.timeout(listen.body_timeout):
            return await request.read()
    except TimeoutError:
        raise BodyRefused(408, f"the body did not arrive within {listen.body_timeout:g} s"
                          ) from None
    except web.HTTPRequestEntityTooLarge:
        raise BodyRefused(413, f"body over {limit} bytes") from None
    except web.RequestPayloadError:
        encoding = request.headers.get("Content-Encoding")
        raise BodyRefused(400, "the body is not valid " + repr(encoding[:40]) if encoding else
                          "the body could not be read") from None
    except ConnectionResetError:
        expected = request.content_length
        logger.info("%s %s: the client disconnected after %d of %s body bytes; nothing stored",
                    request.method, request.path, request.content.total_bytes,
                    "an unknown number of" if expected is None else expected,
                    extra={"action": "client_disconnected"})
        raise BodyRefused(499, "the client disconnected") from None


def verify_signature(secret: str, body: bytes, header: str | None,
                     timestamp: str | None = None) -> bool:
    """`X-Runnerd-Signature: sha256=<hex HMAC-SHA256>`, compared in constant time.

    The HMAC is of the raw body, or of `<timestamp>.<body>` when the request sends
    `X-Runnerd-Timestamp` (so a captured request cannot be replayed with a new timestamp).
    """
    if not header or not header.startswith("sha256="):
        return False
    signed = body if timestamp is None else timestamp.encode("utf-8", "surrogateescape") + (
        b"." + body)
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    given = header[len("sha256="):].strip().lower()
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def timestamp_error(timestamp: str, now: float, tolerance: float) -> str | None:
    """Why `X-Runnerd-Timestamp` is refused (None: it is within `tolerance` of `now`)."""
    try:
        value = float(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} must be Unix seconds"
    if not abs(now - value) <= tolerance:  # also refuses NaN
        return f"{TIMESTAMP_HEADER} is more than {tolerance:g} s away from now"
    return None


def json_or_none(body: bytes) -> tuple[bool, Any]:
    """(True, the value) when `body` is strict JSON (`models.parse_json`), else (False, None).

    NaN, Infinity, 1e400 or a lone surrogate make a body text, like any other non-JSON.
    """
    try:
        return True, models.parse_json(body)
    except ValueError:
        return False, None


def auto_data(body: bytes, content_type: str, query: dict[str, str]) -> tuple[Any, str | None]:
    """`auto` mode: the JSON body; else form fields merged with the query; else the raw text.

    Also returns the body's text when the data is that JSON body and it can be stored as it
    came (strict UTF-8, no BOM): the `data` column gets it without a re-encoding.
    """
    if body.strip():
        parsed, data = json_or_none(body)
        if parsed:
            return data, _storable_text(body)
        if content_type == "application/x-www-form-urlencoded":
            from urllib.parse import parse_qsl

            try:
                fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                        errors="strict", max_num_fields=10_000))
            except (UnicodeDecodeError, ValueError):
                return body.decode("utf-8", errors="replace"), None
            return ({**fields, **query} if fields else body.decode("utf-8", errors="replace"),
                    None)
        return body.decode("utf-8", errors="replace"), None
    return (dict(query) if query else None), None


def _storable_text(body: bytes) -> str | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if text.startswith("\ufeff") else text


def full_data(request: web.Request, body: bytes, request_id: str, webhook: str) -> dict[str, Any]:
    """`full` mode: the whole request."""
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    parsed, data = json_or_none(body) if body.strip() else (False, None)
    return {
        "body": data if parsed else None,
        "body_base64": base64.b64encode(body).decode(),
        "headers": headers,
        "query": {k: v for k, v in request.query.items()},
        "query_string": request.query_string,
        "mime_type": request.content_type,
        "client_ip": request.remote,
        "request_id": request_id,
        "webhook_id": webhook,
    }


async def handle_webhook(request: web.Request) -> web.StreamResponse:
    """POST /webhooks/{name} → 204 + X-Request-Id once the event is committed."""
    response = await _webhook(request)
    request.app[VIEW].on_webhook(response.status)
    return response


async def _webhook(request: web.Request) -> web.StreamResponse:
    st = request.app[VIEW]
    name = request.match_info["name"]
    settings = st.config.settings
    hook = settings.webhook(name)
    if hook is None:
        return _error(404, f"no webhook named {name!r}")
    if request.method != "POST":
        return web.json_response({"error": "only POST is allowed"}, status=405,
                                 headers={"Allow": "POST"})
    if not st.ingest.admit(settings.listen.max_due_runs):
        return web.json_response(
            {"error": f"event not stored: over {settings.listen.max_due_runs} task runs wait to "
                      "be rendered (listen.max_due_runs); retry later"},
            status=503, headers=BACKLOG_RETRY_AFTER)
    try:
        body = await read_body(request, settings.listen)
    except BodyRefused as exc:
        return _error(exc.status, exc.message)
    if hook.secret is not None:
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not verify_signature(hook.secret, body, request.headers.get(SIGNATURE_HEADER),
                                timestamp):
            return _error(401, f"missing or wrong {SIGNATURE_HEADER}")
        if timestamp is not None and (
                problem := timestamp_error(timestamp, st.clock(), hook.tolerance)) is not None:
            return _error(401, problem)
    request_id = models.new_id()
    if hook.mode == "full":
        data, data_json = full_data(request, body, request_id, hook.name), None
    else:
        data, data_json = auto_data(body, request.content_type,
                                    {k: v for k, v in request.query.items()}
                                    if request.query_string else {})
    event = runs.new_event(hook.topic, data, "webhook", st.clock(),
                           webhook_request_id=request_id, data_json=data_json)
    try:
        await st.ingest.submit(event)
    except errors.DatabaseError as exc:
        # The detail (SQLite's words, the file's path) is logged by the ingest, not shown.
        reason = "runnerd is shutting down" if st.ingest.closed else "the database is unavailable"
        logger.debug("webhook %s refused: %s", name, exc, extra={"action": "webhook_503"})
        return _error(503, f"event not stored: {reason}")
    return web.Response(status=204, headers={"X-Request-Id": request_id})
