"""The admin API under /api/*: bearer `admin_token`; absent token = the API is disabled."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runnerd import errors, models
from runnerd.queue import operator, runs
from runnerd.web import context, webhooks

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VIEW = web.AppKey("api", context.Api)


def add_routes(app: web.Application, view: context.Api) -> None:
    """Register the /api/* routes."""
    app[VIEW] = view
    routes = [
        ("GET", "/api/runs", list_runs),
        ("GET", "/api/runs/{id}", show_run),
        ("POST", "/api/runs/{id}/retry", retry_run),
        ("POST", "/api/runs/{id}/cancel", cancel_run),
        ("POST", "/api/events", post_event),
        ("POST", "/api/tasks/{name}/trigger", trigger_task),
        ("GET", "/api/queue", queue),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guarded(handler))


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[VIEW].config.settings.admin_token
        if token is None:
            return web.json_response({"error": "the admin API is disabled (no admin_token)"},
                                     status=404)
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates: encode them back
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except errors.NotFound as exc:
            return web.json_response({"error": exc.message}, status=404)
        except errors.InvalidInput as exc:
            status = exc.status if isinstance(exc, webhooks.BodyRefused) else 400
            return web.json_response({"error": exc.message}, status=status)
        except errors.DatabaseError as exc:
            return web.json_response({"error": exc.message}, status=503,
                                     headers=webhooks.RETRY_AFTER)

    return guarded


async def _body(request: web.Request) -> Any:
    raw = await webhooks.read_body(request, request.app[VIEW].config.settings.listen)
    if not raw.strip():
        return {}
    try:  # the webhooks' rule: no NaN, no 1e400, no lone surrogate, not too deep
        return models.parse_json(raw)
    except ValueError as exc:
        raise errors.InvalidInput(f"the request body is not valid JSON: {exc}") from None


def _wake(request: web.Request) -> None:
    request.app[VIEW].wake()


async def list_runs(request: web.Request) -> web.StreamResponse:
    """GET /api/runs?state=&kind=&task=&limit="""
    st = request.app[VIEW]
    q = request.query
    state, kind, task = q.get("state") or None, q.get("kind") or None, q.get("task") or None
    limit = operator.check_filters(state, kind, task, q.get("limit", "50"))
    executors = st.executors

    def read(tx: Any) -> list[dict[str, Any]]:
        return [operator.run_json(tx, r, executors.redact)
                for r in runs.select(tx, state=state, kind=kind, task=task, limit=limit)]

    return web.json_response(await st.db.read(read))


async def show_run(request: web.Request) -> web.StreamResponse:
    """GET /api/runs/{id}"""
    st = request.app[VIEW]
    run_id = operator.parse_run_id(request.match_info["id"])
    executors = st.executors
    return web.json_response(await st.db.read(
        lambda tx: operator.run_json(tx, runs.get(tx, run_id), executors.redact, detail=True)))


async def _move(request: web.Request, action: str) -> dict[str, Any]:
    """`retry` or `cancel` the run named in the path; the moved run."""
    st = request.app[VIEW]
    run_id = operator.parse_run_id(request.match_info["id"])
    return await operator.move_run(st.db, action, run_id, st.clock(), st.executors.redact)


async def retry_run(request: web.Request) -> web.StreamResponse:
    """POST /api/runs/{id}/retry"""
    out = await _move(request, "retry")
    _wake(request)
    return web.json_response(out)


async def cancel_run(request: web.Request) -> web.StreamResponse:
    """POST /api/runs/{id}/cancel"""
    return web.json_response(await _move(request, "cancel"))


async def post_event(request: web.Request) -> web.StreamResponse:
    """POST /api/events {"topic": ..., "data": ...} → 201 {"id": ...}"""
    st = request.app[VIEW]
    body = await _body(request)
    if not isinstance(body, dict) or "topic" not in body:
        raise errors.InvalidInput('expected {"topic": ..., "data": ...}')
    unknown = sorted(set(body) - {"topic", "data"})
    if unknown:
        raise errors.InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    event_id = await operator.send(st.db, body["topic"], body.get("data"), source="api",
                              now=st.clock())
    _wake(request)
    return web.json_response({"id": event_id}, status=201)


async def trigger_task(request: web.Request) -> web.StreamResponse:
    """POST /api/tasks/{name}/trigger [{"text": ...}] → 201 {"id": ...}"""
    st = request.app[VIEW]
    body = await _body(request)
    text = body.get("text") if isinstance(body, dict) else None
    if text is not None and not isinstance(text, str):
        raise errors.InvalidInput("text must be a string")
    event_id = await operator.trigger(st.db, st.config.registry, request.match_info["name"],
                                      text=text, source="api", now=st.clock())
    _wake(request)
    return web.json_response({"id": event_id}, status=201)


async def queue(request: web.Request) -> web.StreamResponse:
    """GET /api/queue"""
    st = request.app[VIEW]
    now = st.clock()
    return web.json_response(await st.db.read(lambda tx: runs.stats(tx, now)))

