"""Rendering console pages: the autoescaped Liquid environment and the values pages show."""

from __future__ import annotations

import functools
import json
import secrets
from typing import Any

import liquid
from aiohttp import web

from runnerd import models
from runnerd.web import context
from runnerd.web.console import access

VIEW = web.AppKey("console", context.Api)
SESSIONS = web.AppKey("console_sessions", access.Sessions)
SESSION = web.RequestKey("console_session", access.Session)
FORM = web.RequestKey("console_form", dict)
#: JSON longer than this is cut, with a link to the whole run at /api/runs/{id}
PAYLOAD_CHARS = 4000


@functools.cache
def environment() -> liquid.Environment:
    """The templates (package data), with autoescaping: values are HTML-escaped unless marked."""
    return liquid.Environment(loader=liquid.PackageLoader("runnerd.web.console",
                                                          package_path="templates", ext=".html"),
                              autoescape=True)


def page(request: web.Request, name: str, values: dict[str, Any], *,
         status: int = 200) -> web.Response:
    """A whole page: the template `name` inside the layout, with the session's CSRF token and
    `here` (the address with its query: the Refresh links)."""
    session = request.get(SESSION)
    nonce = secrets.token_urlsafe(16)  # the only scripts that run are ours, on this response
    template = environment().get_template(name)
    body = template.render(**values, csrf=session.csrf if session else "",
                           signed_in=session is not None, path=request.path,
                           here=request.path_qs, nonce=nonce)
    return web.Response(text=body, status=status, content_type="text/html", headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                   f"script-src 'nonce-{nonce}'; frame-ancestors 'none'",
        "Referrer-Policy": "same-origin"})


def pretty(value: Any) -> tuple[str, bool]:
    """JSON for people, and whether it was cut at `PAYLOAD_CHARS`."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) > PAYLOAD_CHARS:
        return text[:PAYLOAD_CHARS] + "\n…", True
    return text, False


def ago(ts: float | None, now: float) -> str:
    """"5 min ago" (or "in 5 min") for a Unix time; "never" for none."""
    if ts is None:
        return "never"
    age = now - ts
    span = abs(age)
    text = (f"{span:.0f} s" if span < 120 else f"{span / 60:.0f} min" if span < 7200
            else f"{span / 3600:.1f} h" if span < 172800 else f"{span / 86400:.0f} d")
    return f"{text} ago" if age >= 0 else f"in {text}"


def when(ts: float | None, now: float) -> dict[str, str]:
    """A time for a template: ISO (for <time datetime>) and relative words."""
    return {"iso": models.iso(ts) or "", "ago": ago(ts, now)}
