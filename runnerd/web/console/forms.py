"""The console's POST forms: login and logout, retry and cancel, trigger, preview, pause/resume.

Everything but login runs behind the session and CSRF check of `console._signed_in`; each
change goes through the operations the CLI and the admin API use (queue.operator, taskstatus,
engine.preview), then redirects to the page that shows the result.
"""

from __future__ import annotations

import math
import secrets
from typing import Any
from urllib import parse

from aiohttp import web

from runnerd import errors, models
from runnerd.engine import preview as previews
from runnerd.queue import operator, taskstatus
from runnerd.web.console import access, render


async def login_form(request: web.Request, *, status: int = 200,
                     message: str = "") -> web.StreamResponse:
    """GET /console/login: the form, with a fresh login CSRF token in a short-lived cookie."""
    token = secrets.token_urlsafe(32)
    response = render.page(request, "login.html", {"login_csrf": token, "message": message},
                           status=status)
    access.set_cookie(response, request, access.LOGIN_COOKIE, token, access.LOGIN_SECONDS)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """POST /console/login (`token`, `csrf`): a new session, whatever cookie came before."""
    sessions = request.app[render.SESSIONS]
    wait = sessions.throttled(request)
    if wait > 0:
        return await login_form(request, status=429, message=(
            f"too many login attempts: wait {math.ceil(wait)} s"))
    form = await request.post()
    csrf, token = form.get("csrf"), form.get("token")
    if not access.same(csrf if isinstance(csrf, str) else None,
                       request.cookies.get(access.LOGIN_COOKIE, "\0")):
        return await login_form(request, status=403,
                                message="the form expired: sign in again")
    expected = request.app[render.VIEW].config.settings.admin_token or ""
    if not access.same(token if isinstance(token, str) else None, expected):
        return await login_form(request, status=401, message="wrong token")
    await sessions.end(request)
    sid, _ = await sessions.start()
    response = web.HTTPSeeOther("/console/tasks")
    access.set_cookie(response, request, access.COOKIE, sid, access.SESSION_SECONDS)
    response.del_cookie(access.LOGIN_COOKIE, path="/")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /console/logout: the session ends."""
    await request.app[render.SESSIONS].end(request)
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(access.COOKIE, path="/")
    return response


async def move_run(request: web.Request) -> web.StreamResponse:
    """POST /console/runs/{id}/retry|cancel, then the run's page."""
    view = request.app[render.VIEW]
    run_id = operator.parse_run_id(request.match_info["id"])
    await operator.move_run(view.db, request.match_info["move"], run_id, view.clock(),
                            view.executors.redact)
    view.wake()
    raise web.HTTPSeeOther(f"/console/runs/{run_id}")


async def trigger(request: web.Request) -> web.StreamResponse:
    """POST /console/tasks/{name}/trigger [text]: mechanic/user/trigger, or .../text with text."""
    view = request.app[render.VIEW]
    name = request.match_info["name"]
    form = request[render.FORM]
    text = form.get("text") if form.get("with_text") else None
    event_id = await operator.trigger(view.db, view.config.registry, name, text=text,
                                      source="console", now=view.clock())
    view.wake()
    raise web.HTTPSeeOther(f"/console/events?id={parse.quote(event_id)}")


async def preview(request: web.Request) -> web.StreamResponse:
    """POST /console/tasks/{name}/preview [topic, data]: what the task would do; nothing runs."""
    view = request.app[render.VIEW]
    name = request.match_info["name"]
    form = request[render.FORM]
    topic = form.get("topic", "").strip() or None
    raw = form.get("data", "").strip()
    data: Any = None
    if raw:
        try:
            data = models.parse_json(raw.encode())
        except ValueError as exc:
            raise errors.InvalidInput(f"the event data is not valid JSON: {exc}") from None
    if topic is not None:
        operator.check_topic(topic)
    out = previews.preview(view.config.registry, view.executors, name, topic=topic, data=data,
                           has_data=bool(raw), now=view.clock())
    shown = [{"type": a["type"], "options": render.pretty(
        view.executors.redact(a["type"], a["options"]))[0]} for a in out["actions"]]
    return render.page(request, "preview.html", {
        "task": name, "topic": out["event"]["topic"],
        "data": render.pretty(out["event"]["data"])[0], "actions": shown,
        "logs": [render.pretty(x)[0] for x in out["logs"]], "errors": out["errors"]})


async def pause_resume(request: web.Request) -> web.StreamResponse:
    """POST /console/monitors/{name}/pause|resume, then the monitor's page."""
    view = request.app[render.VIEW]
    name, move = request.match_info["name"], request.match_info["move"]
    change = taskstatus.pause if move == "pause" else taskstatus.resume
    now = view.clock()
    await view.db.write(lambda tx: change(tx, name, now))
    raise web.HTTPSeeOther(f"/console/monitors/{parse.quote(name, safe='')}")
