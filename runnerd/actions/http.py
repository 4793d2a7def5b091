"""The http action: one request (and the redirects it follows, each hop checked against
`http.allow` / `http.deny` by `guard`) through the daemon's shared aiohttp session.

Any HTTP response is a success (Mechanic's rule), except a 5xx with `error_on_5xx`. Failures are
classified by exception type (`_failure`), never by message text:

    transient (retryable)                         permanent
    --------------------------------------------  -------------------------------------------
    5xx with error_on_5xx                         invalid options (method, url, headers, body)
    asyncio.TimeoutError / TimeoutError           ClientConnectorCertificateError,
    ClientConnectorDNSError (DNS failure)           ssl.SSLCertVerificationError
    ClientConnectorError (refused, unreachable)   TooManyRedirects
    ServerDisconnectedError, other                InvalidURL, NonHttpUrlClientError (also as
      ClientConnectionError (reset, ...)            a redirect target)
    ClientPayloadError (body cut short), OSError  ClientResponseError (malformed response),
                                                    ValueError
                                                  guard.Refused (a target the policy denies)

Error messages name the method and the URL without its user info and query, and never a header
value; the aiohttp exception is not chained (its text may carry the full URL).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import yarl

from runnerd import actions, config, errors, models
from runnerd.actions import guard
from runnerd.config import targets

logger = logging.getLogger(__name__)
T = TypeVar("T")

METHODS = ("options", "head", "get", "post", "put", "patch", "delete")
OPTIONS = frozenset({"method", "url", "headers", "body", "follow_redirects", "verify",
                     "error_on_5xx", "timeout"})
#: Mechanic options runnerd does not offer.
UNSUPPORTED = {"files": "file generators are not supported", "proxy": "proxies are not supported"}
MAX_TIMEOUT = 300.0
REDACTED = "[redacted]"
#: Header and query parameter names whose values `redact` hides, and the headers a redirect to
#: another origin drops: names containing token, secret, passw, auth, cookie, session, signature,
#: credential or apikey, or with key, sig, pass, pwd or jwt as a word (`X-Api-Key`, `api_key`;
#: not `Keyboard` or `Keep-Alive`).
SECRET_NAME = re.compile(
    r"token|secret|passw|auth|cookie|session|signature|credential|apikey"
    r"|(?:^|[-_.])(?:key|sig|pass|pwd|jwt)(?:$|[-_.])", re.IGNORECASE)
MAX_REDIRECTS = 10

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 field name
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#]*@")


def _invalid(message: str) -> errors.InvalidAction:
    return errors.InvalidAction(f"http: {message}")


def is_secret(name: str) -> bool:
    """True when the header or query parameter `name` looks secret (SECRET_NAME): `redact`
    hides its value wherever options are shown, and a cross-origin redirect drops the header."""
    return SECRET_NAME.search(name) is not None


def redact_url(url: str) -> str:
    """`url` with its user info and secret-looking query values replaced."""
    try:
        parts = urllib.parse.urlsplit(url)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        pairs = []
    if any(is_secret(k) for k, _ in pairs):
        query = urllib.parse.urlencode(
            [(k, REDACTED if is_secret(k) else v) for k, v in pairs], safe="[]")
        url = urllib.parse.urlunsplit(parts._replace(query=query))
    return _USERINFO.sub(rf"\1{REDACTED}@", url)


def _safe_url(url: yarl.URL) -> str:
    """For messages: no user info, no query."""
    return str(url.with_user(None).with_query(None).with_fragment(None))


def _flag(options: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean option; `"true"`/`"false"` text counts, as Mechanic accepts it (a task often
    writes `"verify": "{{ options.verify__boolean }}"`)."""
    value = options.get(key)
    if value is None:
        return default
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise _invalid(f"{key!r} must be true or false")
    return value


def _url(value: Any) -> yarl.URL:
    if not isinstance(value, str) or not value:
        raise _invalid("'url' is missing" if value is None else "'url' must be a string")
    try:
        url = yarl.URL(value)
    except (ValueError, TypeError):
        raise _invalid("'url' is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _invalid("'url' must start with http:// or https:// and name a host")
    return url


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid("'headers' must be an object of name: value")
    out = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise _invalid(f"'headers' has an invalid header name {str(name)[:64]!r}")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _invalid(f"'headers': the value of {name!r} must be a string")
        text = str(item)
        if any(c in text for c in "\r\n\0"):
            raise _invalid(f"'headers': the value of {name!r} contains a line break")
        out[name] = text
    return out


def _form(body: Any) -> bytes:
    if not isinstance(body, Mapping):
        raise _invalid("a form-encoded 'body' must be an object")
    pairs = []
    for key, value in body.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Mapping | list):
                raise _invalid(f"form field {key!r}: values must be scalars or lists of scalars")
            text = "" if item is None else json.dumps(item) if isinstance(item, bool) else str(item)
            pairs.append((str(key), text))
    return urllib.parse.urlencode(pairs).encode()


def _body(body: Any, headers: dict[str, str]) -> bytes | None:
    """Encode `body` by the request's Content-Type (setting it when unset)."""
    if body is None:
        return None
    name = next((k for k in headers if k.lower() == "content-type"), None)
    media = headers[name].split(";")[0].strip().lower() if name else None
    if isinstance(body, str):
        if name is None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        return body.encode()
    if media is None or media == "application/json" or media.endswith("+json"):
        if name is None:
            headers["Content-Type"] = "application/json"
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    if media == "application/x-www-form-urlencoded":
        return _form(body)
    raise _invalid("'body' is not a string, and Content-Type is neither JSON nor "
                   "application/x-www-form-urlencoded: send the body as a string")


class Request:
    """Validated http options."""

    def __init__(self, options: Any, default_timeout: float) -> None:
        if not isinstance(options, Mapping):
            raise _invalid("options must be an object")
        for key in sorted(k for k in options if not (isinstance(k, str) and k.startswith("__"))
                          and k not in OPTIONS):
            if key in UNSUPPORTED:
                raise _invalid(f"option {key!r} is not supported ({UNSUPPORTED[key]})")
            raise _invalid(f"unknown option {key!r} (allowed: {', '.join(sorted(OPTIONS))})")
        method = options.get("method")
        if not isinstance(method, str) or method.lower() not in METHODS:
            shown = "missing" if method is None else f"invalid: {str(method)[:20]!r}"
            raise _invalid(f"'method' is {shown} (expected one of {', '.join(METHODS)})")
        self.method = method.upper()
        self.url = _url(options.get("url"))
        self.headers = _headers(options.get("headers"))
        if (self.url.user or self.url.password) and any(
                k.lower() == "authorization" for k in self.headers):
            raise _invalid("'url' has credentials and 'headers' has Authorization: use one")
        self.data = _body(options.get("body"), self.headers)
        self.follow_redirects = _flag(options, "follow_redirects", True)
        self.verify = _flag(options, "verify", True)
        self.error_on_5xx = _flag(options, "error_on_5xx", False)
        timeout = options.get("timeout", default_timeout)
        if timeout is None:
            timeout = default_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise _invalid("'timeout' must be a number of seconds greater than 0")
        self.timeout = min(float(timeout), MAX_TIMEOUT)


def _failure(exc: BaseException, request: Request) -> errors.ActionFailed:
    """Classify a request exception by its type."""
    where = f"http: {request.method} {_safe_url(request.url)}"
    permanent: str | None = None
    transient: str | None = None
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
        permanent = f"TLS certificate verification failed ({reason})"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        permanent = f"TLS certificate verification failed ({exc.verify_message or 'not trusted'})"
    elif isinstance(exc, TimeoutError):  # asyncio.TimeoutError and aiohttp's timeouts
        transient = f"timed out after {request.timeout:g} s"
    elif isinstance(exc, aiohttp.TooManyRedirects):
        permanent = "too many redirects"
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        permanent = "an invalid or non-HTTP URL (redirect target)"
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        transient = f"cannot resolve host {exc.host}"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        # asyncio's strerror is "Connect call failed ('host', port)": say why instead.
        code = exc.os_error.errno
        reason = (os.strerror(code) if code else exc.os_error.strerror) or type(
            exc.os_error).__name__
        transient = f"cannot connect to {exc.host}:{exc.port} ({reason})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        transient = "the server closed the connection"
    elif isinstance(exc, aiohttp.ClientResponseError):
        permanent = f"invalid response ({exc.status} {exc.message})"
    elif isinstance(exc, aiohttp.ClientError | OSError):
        transient = f"{type(exc).__name__}: {exc}"
    else:
        permanent = type(exc).__name__
    why = _scrub(permanent if permanent is not None else str(transient), request)
    return errors.ActionFailed(f"{where} failed: {why}", retryable=permanent is None)


def _scrub(text: str, request: Request) -> str:
    """An exception's text as one line, without the URL's credentials or query (aiohttp's
    texts may quote the URL, and a malformed response's bytes come over several lines)."""
    url = request.url
    text = " ".join(text.split()).replace(str(url), _safe_url(url))
    for secret in (url.password, url.raw_query_string):
        if secret and len(secret) >= 4:  # shorter ones would blank out ordinary words
            text = text.replace(secret, REDACTED)
    return text[:500]


async def _read(response: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """At most `cap` bytes of the body (reading cap + 1 at most), and whether it was cut."""
    buffer = bytearray()
    while len(buffer) <= cap:
        chunk = await response.content.read(cap + 1 - len(buffer))
        if not chunk:
            break
        buffer += chunk
    if len(buffer) > cap:
        response.close()  # drop the connection instead of draining a huge body
        return bytes(buffer[:cap]), True
    return bytes(buffer), False


def _decode(raw: bytes, response: aiohttp.ClientResponse, truncated: bool) -> Any:
    try:
        text = raw.decode(response.charset or "utf-8", errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    media = response.content_type
    if not truncated and (media == "application/json" or media.endswith("+json")):
        try:
            return models.parse_json(text)  # NaN or nesting too deep: kept as text
        except ValueError:
            pass
    return text


def redact(options: Any) -> Any:
    """A copy of http `options` with secret headers and URL credentials replaced."""
    if not isinstance(options, Mapping):
        return options
    out = dict(options)
    headers = out.get("headers")
    if isinstance(headers, Mapping):
        out["headers"] = {k: REDACTED if is_secret(str(k)) else v
                          for k, v in headers.items()}
    if isinstance(out.get("url"), str):
        out["url"] = redact_url(out["url"])
    return out


def lane(action_type: str | None, options: Any) -> str | None:
    """The target of an http action run, `scheme://host:port` (None for other runs).

    The worker caps how many runs of one lane are started at once, so one slow target cannot
    hold every slot while other runs wait.
    """
    if action_type != "http" or not isinstance(options, Mapping):
        return None
    url = options.get("url")
    if not isinstance(url, str):
        return None
    try:
        parsed = yarl.URL(url)
        return f"{parsed.scheme}://{parsed.host}:{parsed.port}"
    except (ValueError, TypeError):
        return None


class HttpExecutor:
    """Performs http actions on the daemon's shared aiohttp session.

    `session` comes from `guard.client_session(policy)`, whose resolver checks host names;
    the executor checks IP literals and follows redirects itself, each hop checked.
    """

    type = "http"
    perform_event = True
    inline = False

    def __init__(self, session: aiohttp.ClientSession, settings: config.Http,
                 policy: targets.Policy | None = None) -> None:
        self.session = session
        self.settings = settings
        self.policy = policy or targets.Policy(settings.allow, settings.deny)

    def validate(self, options: Any) -> None:
        """Raise errors.InvalidAction naming what is wrong with `options`."""
        Request(options, self.settings.timeout)

    def redact(self, options: Any) -> Any:
        """A copy of `options` with secret headers and URL credentials replaced."""
        return redact(options)

    async def perform(self, options: Any, ctx: actions.Context) -> Any:
        """Send the request; the response as Mechanic's result, or ActionFailed."""
        try:
            request = Request(options, self.settings.timeout)
        except errors.InvalidAction as exc:
            raise errors.ActionFailed(exc.message) from None
        try:
            async with asyncio.timeout(request.timeout):
                result = await self._exchange(request, self._result)
        except guard.Refused as exc:
            failure = errors.ActionFailed(
                f"http: {request.method} {_safe_url(request.url)} refused: {exc}",
                retryable=False)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            failure = _failure(exc, request)
        else:
            if result["status"] >= 500 and request.error_on_5xx:
                raise errors.ActionFailed(
                    f"http: {request.method} {_safe_url(request.url)} answered "
                    f"{result['status']}", retryable=True)
            return result
        logger.info("%s", failure.message, extra={"action": "http_failed", "run_id": ctx.run.id})
        raise failure from None  # the aiohttp text may hold the URL's credentials

    async def download(self, url: str, limit: int) -> bytes:
        """The body at `url` (a GET, redirects followed, every hop checked like an http
        action's), at most `limit` bytes: the email action's `url` file generator.
        errors.ActionFailed, retryable when the failure is transient."""
        try:
            request = Request({"method": "get", "url": url}, self.settings.timeout)
        except errors.InvalidAction as exc:
            raise errors.ActionFailed(exc.message) from None

        async def body(response: aiohttp.ClientResponse) -> bytes:
            if response.status >= 400:
                raise errors.ActionFailed(
                    f"http: GET {_safe_url(request.url)} answered {response.status}",
                    retryable=response.status >= 500)
            raw, truncated = await _read(response, limit)
            if truncated:
                raise errors.ActionFailed(f"http: GET {_safe_url(request.url)}: the file is "
                                          f"over {limit} bytes")
            return raw

        try:
            async with asyncio.timeout(request.timeout):
                return await self._exchange(request, body)
        except guard.Refused as exc:
            raise errors.ActionFailed(f"http: GET {_safe_url(request.url)} refused: {exc}",
                                      retryable=False) from None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise _failure(exc, request) from None

    async def _exchange(self, request: Request,
                        finish: Callable[[aiohttp.ClientResponse], Awaitable[T]]) -> T:
        """The request and the redirects it follows (at most MAX_REDIRECTS), each hop
        checked; what `finish` makes of the last response."""
        hop = guard.Hop(request.method, request.url, request.headers, request.data)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                guard.check_literal(self.policy, hop.url)
                async with self.session.request(
                    hop.method, hop.url, headers=hop.headers, data=hop.data,
                    allow_redirects=False, ssl=request.verify,
                    timeout=aiohttp.ClientTimeout(total=request.timeout),
                ) as response:
                    following = (hop.follow(response, is_secret)
                                 if request.follow_redirects else None)
                    if following is None:
                        return await finish(response)
            except guard.Refused as exc:
                if hop.url is request.url:
                    raise
                raise guard.Refused(f"the redirect to {_safe_url(hop.url)}: {exc}") from None
            hop = following
        raise aiohttp.TooManyRedirects(response.request_info, ())

    async def _result(self, response: aiohttp.ClientResponse) -> dict[str, Any]:
        raw, truncated = await _read(response, self.settings.max_response_bytes)
        headers: dict[str, list[str]] = {}
        for name, value in response.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        result: dict[str, Any] = {"status": response.status, "headers": headers,
                                  "body": _decode(raw, response, truncated),
                                  "body_base64": base64.b64encode(raw).decode("ascii")}
        if truncated:
            result["truncated"] = True
        return result

    async def close(self) -> None:
        """Nothing to release: the daemon owns the session."""
