"""The http action against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils, web

from runnerd import config, errors
from runnerd.actions import guard
from runnerd.actions import http as http_action
from runnerd.config import targets
from tests import helpers_servers

BINARY = bytes(range(256)) * 4
CAP = 10_000
RELEASE = web.AppKey("release", asyncio.Event)
HITS = web.AppKey("hits", list[str])


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body": body.decode(),
        "query": dict(request.query),
    })


async def slow(request: web.Request) -> web.Response:
    # Released by the fixture's teardown (or cancelled when the client hangs up).
    await asyncio.wait_for(request.app[RELEASE].wait(), 30)
    return web.Response(text="late")


async def huge(request: web.Request) -> web.StreamResponse:
    """A body that never ends within any test's budget: reading it all would hang the test."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    chunk = b"x" * 65536
    for _ in range(16384):  # 1 GiB
        await response.write(chunk)
    return response


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status body")


def fixed(make: Callable[[], web.Response]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler answering `make()` to every request."""

    async def handler(request: web.Request) -> web.Response:
        return make()

    return handler


async def to(request: web.Request) -> web.Response:
    """A redirect to ?url= with the status ?code= (302 by default)."""
    code = int(request.query.get("code", "302"))
    return web.Response(status=code, headers={"Location": request.query["url"]})


@web.middleware
async def record(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[HITS].append(request.path)
    response: web.StreamResponse = await handler(request)
    return response


def app() -> web.Application:
    application = web.Application(middlewares=[record])
    application[RELEASE] = asyncio.Event()
    application[HITS] = []
    routes = [
        web.get("/json", fixed(lambda: web.json_response({"ok": True, "items": [1, 2]}))),
        web.get("/problem", fixed(lambda: web.Response(
            text='{"title": "nope"}', content_type="application/problem+json"))),
        web.get("/broken-json", fixed(lambda: web.Response(text="{not json",
                                                           content_type="application/json"))),
        web.get("/text", fixed(lambda: web.Response(text="héllo wörld"))),
        web.get("/binary", fixed(lambda: web.Response(body=BINARY,
                                                      content_type="application/octet-stream"))),
        web.get("/cookies", cookies),
        web.get("/redirect", redirect),
        web.get("/loop", loop_redirect),
        web.route("*", "/to", to),
        web.get("/status/{code}", status),
        web.get("/slow", slow),
        web.get("/huge", huge),
        web.route("*", "/echo", echo),
    ]
    application.add_routes(routes)
    return application


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    return response


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/json")


async def loop_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/loop")


@contextlib.asynccontextmanager
async def serving(host: str = "127.0.0.1") -> AsyncIterator[test_utils.TestServer]:
    """The test app on `host` (any of 127.0.0.0/8: Linux serves them all on lo)."""
    application = app()
    server = test_utils.TestServer(application, host=host)
    await server.start_server()
    try:
        yield server
    finally:
        application[RELEASE].set()
        await server.close()


@pytest.fixture
async def server() -> AsyncIterator[test_utils.TestServer]:
    async with serving() as started:
        yield started


@contextlib.asynccontextmanager
async def guarded(policy: targets.Policy) -> AsyncIterator[http_action.HttpExecutor]:
    """An executor on a session built as the daemon builds it, checking `policy`."""
    settings = config.Http(timeout=5.0, max_response_bytes=CAP)
    async with guard.client_session(policy, aiohttp.ClientTimeout(total=5)) as session:
        yield http_action.HttpExecutor(session, settings, policy)


@pytest.fixture
async def executor() -> AsyncIterator[http_action.HttpExecutor]:
    async with guarded(targets.Policy()) as made:
        yield made


def hits(server: test_utils.TestServer) -> list[str]:
    return server.app[HITS]


def url(server: test_utils.TestServer, path: str) -> str:
    return str(server.make_url(path))


async def get(executor: http_action.HttpExecutor, target: str, **options: Any) -> Any:
    return await executor.perform({"method": "get", "url": target, **options},
                                  helpers_servers.context())


# -- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "expected"), [
    ({"url": "https://x.test/"}, "'method' is missing"),
    ({"method": "fetch", "url": "https://x.test/"}, "'method' is invalid"),
    ({"method": "get"}, "'url' is missing"),
    ({"method": "get", "url": "ftp://x.test/"}, "must start with http:// or https://"),
    ({"method": "get", "url": "/relative"}, "must start with http:// or https://"),
    ({"method": "get", "url": "https://x.test/", "headers": ["a"]}, "'headers' must be an object"),
    ({"method": "get", "url": "https://x.test/", "headers": {"X-A": "1\r\nX-B: 2"}},
     "contains a line break"),
    ({"method": "get", "url": "https://x.test/", "headers": {"Bad Name": "1"}},
     "invalid header name"),
    ({"method": "get", "url": "https://x.test/", "verify": "no"}, "'verify' must be true or false"),
    ({"method": "get", "url": "https://x.test/", "timeout": 0}, "'timeout' must be a number"),
    ({"method": "get", "url": "https://x.test/", "timeout": True}, "'timeout' must be a number"),
    ({"method": "post", "url": "https://x.test/", "body": {"a": 1},
      "headers": {"Content-Type": "text/xml"}}, "send the body as a string"),
    ({"method": "post", "url": "https://x.test/", "body": {"a": {"b": 1}},
      "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, "form field 'a'"),
    ({"method": "get", "url": "https://x.test/", "proxy": "http://p"}, "'proxy' is not supported"),
    ({"method": "get", "url": "https://u:p@x.test/", "headers": {"authorization": "Basic x"}},
     "'url' has credentials and 'headers' has Authorization"),
    ({"method": "get", "url": "https://x.test/", "methd": "get"},
     "unknown option 'methd' (allowed: body, error_on_5xx, follow_redirects, headers, method"),
    ("get https://x.test/", "options must be an object"),
])
def test_validate_rejects_with_one_clear_line(options: Any, expected: str) -> None:
    executor = http_action.HttpExecutor(None, config.Http())  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidAction) as info:
        executor.validate(options)
    assert expected in info.value.message
    assert info.value.message.startswith("http: ")


def test_validate_accepts_mechanic_options() -> None:
    executor = http_action.HttpExecutor(None, config.Http())  # type: ignore[arg-type]
    executor.validate({"method": "POST", "url": "http://x.test/a?b=1", "body": [1, 2],
                       "headers": {"X-Count": 3}, "follow_redirects": False, "verify": False,
                       "error_on_5xx": True, "timeout": 10_000, "__perform_event": False})
    request = http_action.Request({"method": "get", "url": "http://x.test/", "timeout": 10_000},
                                  30.0)
    assert request.timeout == http_action.MAX_TIMEOUT


@pytest.mark.parametrize("name", [
    "Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-Api-Key", "api_key",
    "apikey", "X-APIKEY", "key", "X-Key", "X-Access-Key-Id", "X-Auth", "X-Auth-Token",
    "X-Password", "passwd", "X-Pass", "pwd", "X-Webhook-Secret", "X-Session-Id",
    "X-Hub-Signature-256", "sig", "X-Jwt", "X-Credentials", "access_token", "X-CSRF-Token"])
def test_secret_looking_names(name: str) -> None:
    assert http_action.is_secret(name)


@pytest.mark.parametrize("name", [
    "Content-Type", "Content-Length", "Accept", "Accept-Language", "User-Agent", "Keyboard",
    "Keep-Alive", "X-Monkey", "X-Request-Id", "If-None-Match", "q", "page", "passage",
    "X-Signed-Off", "Host"])
def test_ordinary_names(name: str) -> None:
    assert not http_action.is_secret(name)


def test_redact_hides_secrets_without_touching_the_options() -> None:
    executor = http_action.HttpExecutor(None, config.Http())  # type: ignore[arg-type]
    options = {
        "method": "get",
        "url": "https://bob:hunter2@api.test/v1?access_token=abc&q=shoes&session=s1",
        "headers": {"Authorization": "Bearer s3cr3t", "x-api-key": "k", "X-Auth-Token": "t",
                    "X-Webhook-Secret": "w", "COOKIE": "c=1", "X-Password": "p", "X-Auth": "a",
                    "Accept": "application/json", "Content-Type": "text/plain"},
    }
    redacted = executor.redact(options)
    assert redacted["headers"] == {
        "Authorization": "[redacted]", "x-api-key": "[redacted]", "X-Auth-Token": "[redacted]",
        "X-Webhook-Secret": "[redacted]", "COOKIE": "[redacted]", "X-Password": "[redacted]",
        "X-Auth": "[redacted]", "Accept": "application/json", "Content-Type": "text/plain"}
    assert "hunter2" not in redacted["url"] and "bob" not in redacted["url"]
    assert "abc" not in redacted["url"] and "s1" not in redacted["url"]
    assert "q=shoes" in redacted["url"]
    assert options["headers"]["Authorization"] == "Bearer s3cr3t"  # the input is not changed
    assert executor.redact("not a mapping") == "not a mapping"


# -- responses ------------------------------------------------------------------------------------

async def test_json_response_is_parsed(server: Any, executor: Any) -> None:
    result = await get(executor, url(server, "/json"))
    assert result["status"] == 200
    assert result["body"] == {"ok": True, "items": [1, 2]}
    assert result["headers"]["content-type"] == ["application/json; charset=utf-8"]
    assert json.loads(base64.b64decode(result["body_base64"])) == result["body"]
    assert "truncated" not in result


async def test_plus_json_is_parsed_and_broken_json_is_text(server: Any, executor: Any) -> None:
    assert (await get(executor, url(server, "/problem")))["body"] == {"title": "nope"}
    assert (await get(executor, url(server, "/broken-json")))["body"] == "{not json"


async def test_text_and_binary_bodies(server: Any, executor: Any) -> None:
    text = await get(executor, url(server, "/text"))
    assert text["body"] == "héllo wörld"
    binary = await get(executor, url(server, "/binary"))
    assert base64.b64decode(binary["body_base64"]) == BINARY
    assert isinstance(binary["body"], str)


async def test_repeated_headers_are_lists(server: Any, executor: Any) -> None:
    result = await get(executor, url(server, "/cookies"))
    assert result["headers"]["set-cookie"] == ["a=1", "b=2"]


async def test_redirects_followed_by_default(server: Any, executor: Any) -> None:
    followed = await get(executor, url(server, "/redirect"))
    assert followed["status"] == 200 and followed["body"]["ok"] is True
    kept = await get(executor, url(server, "/redirect"), follow_redirects=False)
    assert kept["status"] == 302
    assert kept["headers"]["location"] == ["/json"]


async def test_too_many_redirects_is_permanent(server: Any, executor: Any) -> None:
    with pytest.raises(errors.ActionFailed) as info:
        await get(executor, url(server, "/loop"))
    assert info.value.retryable is False
    assert "too many redirects" in info.value.message


async def test_4xx_and_5xx_are_successes_by_default(server: Any, executor: Any) -> None:
    assert (await get(executor, url(server, "/status/404")))["status"] == 404
    result = await get(executor, url(server, "/status/500"))
    assert result["status"] == 500 and result["body"] == "status body"


async def test_5xx_with_error_on_5xx_is_transient(server: Any, executor: Any) -> None:
    with pytest.raises(errors.ActionFailed) as info:
        await get(executor, url(server, "/status/503"), error_on_5xx=True)
    assert info.value.retryable is True
    assert "503" in info.value.message
    assert (await get(executor, url(server, "/status/404"), error_on_5xx=True))["status"] == 404


async def test_timeout_is_transient(server: Any, executor: Any) -> None:
    with pytest.raises(errors.ActionFailed) as info:
        await get(executor, url(server, "/slow"), timeout=0.2)
    assert info.value.retryable is True
    assert "timed out" in info.value.message


async def test_huge_body_is_truncated_at_the_cap(server: Any, executor: Any) -> None:
    async with asyncio.timeout(10):
        result = await get(executor, url(server, "/huge"))
    assert result["truncated"] is True
    assert len(base64.b64decode(result["body_base64"])) == CAP
    assert result["body"] == "x" * CAP


async def test_head_has_no_body(server: Any, executor: Any) -> None:
    result = await executor.perform({"method": "HEAD", "url": url(server, "/json")},
                                    helpers_servers.context())
    assert result["status"] == 200 and result["body"] == "" and result["body_base64"] == ""


# -- request bodies and headers -------------------------------------------------------------------

async def test_object_body_is_json_encoded(server: Any, executor: Any) -> None:
    result = await executor.perform({
        "method": "post", "url": url(server, "/echo?x=1"), "body": {"order": 1, "tags": ["a"]},
        "headers": {"X-Custom": "yes", "Authorization": "Bearer t0ken"},
    }, helpers_servers.context())
    echoed = result["body"]
    assert echoed["method"] == "POST"
    assert echoed["headers"]["content-type"] == "application/json"
    assert echoed["headers"]["x-custom"] == "yes"
    assert echoed["headers"]["authorization"] == "Bearer t0ken"
    assert json.loads(echoed["body"]) == {"order": 1, "tags": ["a"]}
    assert echoed["query"] == {"x": "1"}


async def test_array_body_with_explicit_json_type(server: Any, executor: Any) -> None:
    result = await executor.perform({
        "method": "put", "url": url(server, "/echo"), "body": [1, "é"],
        "headers": {"content-type": "application/json; charset=utf-8"},
    }, helpers_servers.context())
    assert result["body"]["headers"]["content-type"] == "application/json; charset=utf-8"
    assert json.loads(result["body"]["body"]) == [1, "é"]


async def test_form_body_is_url_encoded(server: Any, executor: Any) -> None:
    result = await executor.perform({
        "method": "post", "url": url(server, "/echo"),
        "body": {"name": "A & B", "n": 2, "ok": True, "tag": ["x", "y"]},
        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
    }, helpers_servers.context())
    assert result["body"]["body"] == "name=A+%26+B&n=2&ok=true&tag=x&tag=y"


async def test_string_body_is_sent_as_is(server: Any, executor: Any) -> None:
    raw = '<order id="1"/>'
    result = await executor.perform({
        "method": "patch", "url": url(server, "/echo"), "body": raw,
        "headers": {"Content-Type": "application/xml"},
    }, helpers_servers.context())
    assert result["body"]["method"] == "PATCH"
    assert result["body"]["body"] == raw
    assert result["body"]["headers"]["content-type"] == "application/xml"
    plain = await executor.perform({"method": "post", "url": url(server, "/echo"), "body": "hi"},
                                   helpers_servers.context())
    assert plain["body"]["headers"]["content-type"] == "text/plain; charset=utf-8"


# -- connection failures --------------------------------------------------------------------------

async def test_refused_connection_is_transient_and_keeps_secrets(executor: Any) -> None:
    with helpers_servers.refused_port() as port:
        with pytest.raises(errors.ActionFailed) as info:
            await executor.perform({
                "method": "get", "url": f"http://127.0.0.1:{port}/x?token=abc",
                "headers": {"X-Api-Key": "very-secret-value"},
            }, helpers_servers.context())
    message = info.value.message
    assert info.value.retryable is True
    assert "cannot connect" in message
    assert "very-secret-value" not in message and "abc" not in message
    assert info.value.__cause__ is None


async def test_url_credentials_never_reach_the_message(executor: Any) -> None:
    with helpers_servers.refused_port() as port:
        with pytest.raises(errors.ActionFailed) as info:
            await get(executor, f"http://user:pa55word@127.0.0.1:{port}/x")
    assert info.value.retryable is True
    assert "pa55word" not in info.value.message and "user" not in info.value.message


@pytest.fixture(scope="module")
def tls() -> helpers_servers.Tls:
    return helpers_servers.Tls.make()


@pytest.fixture
async def https_server(tls: helpers_servers.Tls) -> AsyncIterator[test_utils.TestServer]:
    server = test_utils.TestServer(app(), host="127.0.0.1")
    await server.start_server(ssl=tls.server)
    try:
        yield server
    finally:
        await server.close()


async def test_untrusted_certificate_is_permanent(https_server: Any, executor: Any) -> None:
    target = url(https_server, "/json")
    assert target.startswith("https://")
    with pytest.raises(errors.ActionFailed) as info:
        await get(executor, target)
    assert info.value.retryable is False
    assert "certificate" in info.value.message
    result = await get(executor, target, verify=False)
    assert result["body"] == {"ok": True, "items": [1, 2]}


# -- where requests may go (http.allow, http.deny) -----------------------------------------------

def deny_loopback(*allow: str, listen: tuple[str, int] | None = None) -> targets.Policy:
    return targets.Policy([targets.parse(a) for a in allow], [targets.parse("127.0.0.0/8")],
                          listen)


async def test_a_denied_target_is_refused_before_any_request(server: Any) -> None:
    shown = {"127.0.0.1": f"127.0.0.1:{server.port}",
             "localhost": f"localhost (127.0.0.1:{server.port})"}
    async with guarded(deny_loopback()) as denying:
        for host in shown:  # an IP literal, and a name the resolver sees
            with pytest.raises(errors.ActionFailed) as info:
                await get(denying, f"http://{host}:{server.port}/echo?token=abc",
                          headers={"X-Api-Key": "k"})
            assert info.value.retryable is False
            assert info.value.message == (
                f"http: GET http://{host}:{server.port}/echo refused: {shown[host]} is denied "
                "by http.deny entry '127.0.0.0/8'")
    assert hits(server) == []


async def test_the_daemons_own_listener_is_refused_by_default(server: Any) -> None:
    async with guarded(targets.Policy(listen=("127.0.0.1", server.port))) as own:
        with pytest.raises(errors.ActionFailed) as info:
            await own.perform({"method": "post", "url": url(server, "/echo"), "body": {}},
                              helpers_servers.context())
    assert info.value.retryable is False
    assert "is the daemon's own listener, denied by default" in info.value.message
    assert hits(server) == []


async def test_a_redirect_to_a_denied_target_is_refused_at_the_hop() -> None:
    async with serving("127.0.0.2") as allowed, serving("127.0.0.3") as denied, guarded(
            deny_loopback("127.0.0.2")) as executor:
        hop = url(denied, "/echo")
        assert hop.startswith("http://127.0.0.3:")
        with pytest.raises(errors.ActionFailed) as info:
            await get(executor, url(allowed, "/to?url=" + hop))
        assert info.value.retryable is False
        assert info.value.message == (
            f"http: GET http://127.0.0.2:{allowed.port}/to refused: the redirect to {hop}: "
            f"127.0.0.3:{denied.port} is denied by http.deny entry '127.0.0.0/8'")
        assert hits(allowed) == ["/to"] and hits(denied) == []


async def test_a_pooled_connection_is_not_reused_for_a_denied_target(server: Any) -> None:
    """aiohttp pools connections by host, port and TLS: a kept-alive connection to an allowed
    name is never lent to a request that names a denied address of the same socket."""
    async with guarded(deny_loopback("localhost")) as executor:
        assert (await get(executor, f"http://localhost:{server.port}/json"))["status"] == 200
        with pytest.raises(errors.ActionFailed, match="is denied by http.deny"):
            await get(executor, f"http://127.0.0.1:{server.port}/json")
        assert (await get(executor, f"http://localhost:{server.port}/json"))["status"] == 200
    assert hits(server) == ["/json", "/json"]


SENT = {"Authorization": "Bearer a", "X-Api-Key": "k", "X-Auth": "x", "X-Password": "p",
        "X-Session-Id": "s", "Cookie": "c=1", "Accept": "application/json", "X-Custom": "yes"}


async def test_a_redirect_to_another_host_drops_secret_headers(server: Any,
                                                                executor: Any) -> None:
    async with serving("127.0.0.2") as other:
        elsewhere = await get(executor, url(server, "/to?url=" + url(other, "/echo")),
                              headers=SENT)
        same = await get(executor, url(server, "/to?url=/echo"), headers=SENT)
    received = elsewhere["body"]["headers"]
    assert {k for k in SENT if k.lower() in received} == {"Accept", "X-Custom"}
    kept = same["body"]["headers"]
    assert {k: kept[k.lower()] for k in SENT} == SENT  # same origin: all of them


async def test_see_other_turns_a_post_into_a_get_without_body(server: Any, executor: Any) -> None:
    result = await executor.perform({
        "method": "post", "url": url(server, "/to?code=303&url=/echo"), "body": {"a": 1},
    }, helpers_servers.context())
    assert result["body"]["method"] == "GET" and result["body"]["body"] == ""
    assert "content-type" not in result["body"]["headers"]
    kept = await executor.perform({
        "method": "post", "url": url(server, "/to?code=307&url=/echo"), "body": {"a": 1},
    }, helpers_servers.context())
    assert kept["body"]["method"] == "POST" and json.loads(kept["body"]["body"]) == {"a": 1}


@pytest.mark.parametrize(("given", "verify", "error_on_5xx"), [
    ({"verify": "false", "error_on_5xx": "true"}, False, True),
    ({"verify": "true", "error_on_5xx": "false"}, True, False),
    ({"verify": False, "error_on_5xx": True}, False, True),
    ({}, True, False),
])
def test_boolean_options_as_text(given: dict[str, Any], verify: bool, error_on_5xx: bool) -> None:
    # Mechanic accepts "true"/"false" text: `"verify": "{{ options.verify__boolean }}"`
    request = http_action.Request({"method": "get", "url": "http://x.test/", **given}, 10)
    assert (request.verify, request.error_on_5xx) == (verify, error_on_5xx)
