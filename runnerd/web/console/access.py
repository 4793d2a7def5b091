"""Who may use the console: sessions started by the admin token, and CSRF tokens.

A session id is a random value the server made at login (never the token, never one a browser
offered before: a cookie set before login is not honoured after it). Sessions are rows of the
database's `console_sessions` (the SHA-256 of the id, never the id, and the session's CSRF
token), so they survive a restart and every daemon on a shared database honours them; they
expire `SESSION_SECONDS` after login and are pruned at the next login. Every POST form carries
the session's CSRF token; the login form carries a token of its own, kept in a short-lived
cookie, so a page elsewhere cannot sign a browser in. Login attempts are counted in memory,
per process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from aiohttp import web

from runnerd.monitoring import ratelimit
from runnerd.store import db

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


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Sessions:
    """The signed-in browsers (in the database), and the login attempts by client address."""

    def __init__(self, database: db.Database, clock: Callable[[], float]) -> None:
        self.db = database
        self.clock = clock
        self.attempts = ratelimit.Buckets()

    async def start(self) -> tuple[str, Session]:
        """A new session (a fresh id); expired ones go, and the oldest beyond MAX_SESSIONS."""
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), now + SESSION_SECONDS)

        def store(tx: db.Tx) -> None:
            tx.execute("console_sessions_prune", {"now": now, "keep": MAX_SESSIONS - 1})
            tx.execute("console_session_start", {"id_hash": _hash(sid), "csrf": session.csrf,
                                                 "now": now, "expires_at": session.expires_at})

        await self.db.write(store)
        return sid, session

    async def get(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one."""
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        params = {"id_hash": _hash(sid), "now": self.clock()}
        row = await self.db.read(lambda tx: tx.one("console_session_get", params))
        return Session(row["csrf"], row["expires_at"]) if row else None

    async def end(self, request: web.Request) -> None:
        """Forget the request's session (logout, or a login replacing it)."""
        sid = request.cookies.get(COOKIE)
        if sid:
            await self.db.write(lambda tx: tx.execute("console_session_end",
                                                      {"id_hash": _hash(sid)}))

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
