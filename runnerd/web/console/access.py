"""Who may use the console: server-side sessions started by the admin token, and CSRF tokens.

A session id is a random value the server made at login (never the token, never one a browser
offered before: a cookie set before login is not honoured after it). Sessions live in memory
(one process: a restart signs everyone out) and expire `SESSION_SECONDS` after login. Every POST
form carries the session's CSRF token; the login form carries a token of its own, kept in a
short-lived cookie, so a page elsewhere cannot sign a browser in.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from aiohttp import web

from runnerd.monitoring import ratelimit

COOKIE = "runnerd_session"
LOGIN_COOKIE = "runnerd_login"
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 600
#: login attempts a client address may make per minute (the burst), right or wrong
LOGINS_PER_MINUTE = 5
MAX_SESSIONS = 1000


class Session:
    """One signed-in browser."""

    __slots__ = ("csrf", "expires_at")

    def __init__(self, csrf: str, expires_at: float) -> None:
        self.csrf = csrf
        self.expires_at = expires_at


class Sessions:
    """The signed-in browsers, and the login attempts by client address."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self.attempts = ratelimit.Buckets()

    def start(self) -> tuple[str, Session]:
        """A new session (a fresh id); the oldest ones go when there are too many."""
        now = self.clock()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), now + SESSION_SECONDS)
        self._sessions[sid] = session
        return sid, session

    def get(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one."""
        session = self._sessions.get(request.cookies.get(COOKIE, ""))
        if session is None or session.expires_at <= self.clock():
            return None
        return session

    def end(self, request: web.Request) -> None:
        """Forget the request's session (logout)."""
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)

    def throttled(self, request: web.Request) -> float:
        """Count a login attempt from the client; seconds to wait when it is one too many."""
        return self.attempts.take(request.remote or "?", LOGINS_PER_MINUTE, self.clock())


def same(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted secret."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str,
               max_age: int) -> None:
    """An HttpOnly, SameSite=Strict cookie for /console (Secure when served over https)."""
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="Strict", secure=request.secure)
