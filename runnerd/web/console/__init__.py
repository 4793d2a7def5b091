"""The operators' console under /console/: server-rendered pages and POST forms.

Off unless `admin_token` is set (then every /console/* answers 404). Pages are python-liquid
templates (package data, autoescaped: everything from users is escaped); handlers are in
`pages` (GET) and `forms` (POST, each checking the session's CSRF token); who may use it is
`access`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runnerd import errors
from runnerd.web import context, webhooks
from runnerd.web.console import access, forms, pages, render

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, view: context.Api) -> None:
    """Register the /console/* routes (the sessions' bookkeeping lives in the application)."""
    app[render.VIEW] = view
    app[render.SESSIONS] = access.Sessions(view.db, view.clock)
    open_routes: list[tuple[str, str, Handler]] = [
        ("GET", "/console/login", forms.login_form),
        ("POST", "/console/login", forms.login),
    ]
    for method, path, handler in open_routes:
        app.router.add_route(method, path, _enabled(handler))
    signed_in: list[tuple[str, str, Handler]] = [
        ("GET", "/console", pages.home), ("GET", "/console/", pages.home),
        ("GET", "/console/tasks", pages.tasks),
        ("GET", "/console/runs", pages.run_list),
        ("GET", "/console/runs/{id}", pages.run),
        ("GET", "/console/events", pages.events),
        ("GET", "/console/monitors", pages.monitor_list),
        ("GET", "/console/monitors/{name}", pages.monitor),
        ("GET", "/console/queue", pages.queue),
        ("POST", "/console/logout", forms.logout),
        ("POST", "/console/runs/{id}/{move:retry|cancel}", forms.move_run),
        ("POST", "/console/tasks/{name}/trigger", forms.trigger),
        ("POST", "/console/tasks/{name}/preview", forms.preview),
        ("POST", "/console/monitors/{name}/{move:pause|resume}", forms.pause_resume),
    ]
    for method, path, handler in signed_in:
        app.router.add_route(method, path, _enabled(_signed_in(handler)))


def _enabled(handler: Handler) -> Handler:
    async def enabled(request: web.Request) -> web.StreamResponse:
        if request.app[render.VIEW].config.settings.admin_token is None:
            raise web.HTTPNotFound(text="the console is disabled (no admin_token)")
        try:
            return await handler(request)
        except (errors.NotFound, errors.InvalidInput) as exc:
            status = 404 if isinstance(exc, errors.NotFound) else 400
            return render.page(request, "problem.html", {"message": exc.message},
                               status=status)
        except errors.DatabaseError as exc:  # retry later, as webhooks, pings and /api say
            page = render.page(request, "problem.html", {"message": exc.message}, status=503)
            page.headers.update(webhooks.RETRY_AFTER)
            return page

    return enabled


def _signed_in(handler: Handler) -> Handler:
    """GET without a session: to the login form; POST without a session or its CSRF token: 403."""
    async def signed_in(request: web.Request) -> web.StreamResponse:
        session = await request.app[render.SESSIONS].get(request)
        if session is None:
            if request.method == "GET":
                raise web.HTTPSeeOther("/console/login")
            raise web.HTTPForbidden(text="not signed in")
        request[render.SESSION] = session
        if request.method == "POST":
            form = await request.post()
            given = form.get("csrf")
            if not access.same(given if isinstance(given, str) else None, session.csrf):
                raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
            request[render.FORM] = {k: v for k, v in form.items() if isinstance(v, str)}
        return await handler(request)

    return signed_in


async def signed_in(request: web.Request) -> bool:
    """Whether the request comes from a signed-in browser (/status links into the console)."""
    sessions: Any = request.app.get(render.SESSIONS)
    return sessions is not None and await sessions.get(request) is not None



