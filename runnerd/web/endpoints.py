"""The operations endpoints (no token): /ping/*, /health, /metrics and /status.

A ping is refused before anything is recorded when its client address or (once its ping key, if
the monitor has one, is right) its monitor is over `monitoring.ping_rate_per_client` or
`monitoring.ping_rate` (429), or when the key is missing or wrong (401). A wrong key does not
use up the monitor's own rate, so guessing cannot starve the real job's pings.
"""

from __future__ import annotations

import hmac
import math

from aiohttp import web

from runnerd import config, errors
from runnerd.monitoring import metrics, monitors, pings, ratelimit
from runnerd.web import console, context, status, webhooks

PING_METHODS = frozenset({"GET", "POST", "HEAD"})
PING_KEY_HEADER = "X-Runnerd-Ping-Key"
#: Pings taken per monitor name and per client address (`ratelimit`, in this process).
MONITOR_BUCKETS = web.AppKey("monitor_buckets", ratelimit.Buckets)
CLIENT_BUCKETS = web.AppKey("client_buckets", ratelimit.Buckets)
VIEW = web.AppKey("ops", context.Ops)


def add_routes(app: web.Application, view: context.Ops) -> None:
    """Register the routes."""
    app[VIEW] = view
    app[MONITOR_BUCKETS] = ratelimit.Buckets()
    app[CLIENT_BUCKETS] = ratelimit.Buckets()
    app.router.add_route("*", "/ping/{name}", ping)
    app.router.add_route("*", "/ping/{name}/{kind}", ping)
    app.router.add_route("GET", "/health", health)
    app.router.add_route("GET", "/metrics", prometheus)
    app.router.add_route("GET", "/status", status_page)


def _text(status_code: int, text: str) -> web.Response:
    return web.Response(status=status_code, text=text + "\n",
                        headers=webhooks.RETRY_AFTER if status_code == 503 else None)


def _too_many(wait: float, whose: str) -> web.Response:
    return web.Response(status=429, text=f"too many pings {whose}: retry later\n",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _key_ok(request: web.Request, monitor: config.Monitor) -> bool:
    """The monitor has no ping key, or the request carries it (compared in constant time)."""
    if monitor.ping_key is None:
        return True
    given = request.headers.get(PING_KEY_HEADER) or request.query.get("key") or ""
    return hmac.compare_digest(given.encode(), monitor.ping_key.encode())


def _refusal(request: web.Request, monitor: config.Monitor) -> web.Response | None:
    """405, 429 or 401 for a ping that must not be recorded; None to record it."""
    if request.method not in PING_METHODS:
        return web.Response(status=405, text="use GET or POST\n",
                            headers={"Allow": "GET, POST, HEAD"})
    st = request.app[VIEW]
    rates, now = st.config.settings.monitoring, st.clock()
    client = request.remote or "unknown"
    if wait := request.app[CLIENT_BUCKETS].take(client, rates.ping_rate_per_client, now):
        return _too_many(wait, f"from {client}")
    if not _key_ok(request, monitor):
        return _text(401, f"missing or wrong ping key for monitor {monitor.name!r} "
                          f"(?key= or {PING_KEY_HEADER})")
    if wait := request.app[MONITOR_BUCKETS].take(monitor.name, rates.ping_rate, now):
        return _too_many(wait, f"for monitor {monitor.name!r}")
    return None


async def ping(request: web.Request) -> web.StreamResponse:
    """GET/POST/HEAD /ping/{name}[/start|/fail|/log|/{0-255}][?rid=] → 200 "OK" (404 for an
    unknown monitor or path; 405, 429, 401 refused)."""
    st = request.app[VIEW]
    name = request.match_info["name"]
    suffix = request.match_info.get("kind", "")
    kind = pings.kind_of(suffix)
    if kind is None:
        return _text(404, f"no such ping: /ping/{name}/{suffix} (use /start, /fail, /log or "
                          "an exit status 0-255)")
    monitor = monitors.ping_monitor(st.config.settings, name)
    if monitor is None:
        return _text(404, f"no ping monitor named {name!r}")
    if (refused := _refusal(request, monitor)) is not None:
        return refused
    try:
        body = await webhooks.read_body(request, st.config.settings.listen)
    except webhooks.BodyRefused as exc:
        return _text(exc.status, exc.message)
    received = pings.Ping(name=name, kind=kind[0], exit_status=kind[1], body=body,
                          method=request.method, remote_addr=request.remote,
                          rid=request.query.get("rid") or None)
    try:
        events = await monitors.ping(st.db, st.config.settings.monitoring, received, st.clock())
    except errors.DatabaseError as exc:
        return _text(503, f"not recorded: {exc.message}")
    if events:
        st.wake()
    return _text(200, "OK")


async def health(request: web.Request) -> web.StreamResponse:
    """GET /health → 200 with the facts when healthy, 503 with the reasons when not."""
    st = request.app[VIEW]
    facts = st.heartbeat.facts(st.clock())
    facts["monitors_last_tick"] = (None if st.monitors.last_tick is None
                                   else round(st.clock() - st.monitors.last_tick, 3))
    if facts["status"] == "ok":
        return web.json_response(facts)
    return web.json_response(facts, status=503, headers=webhooks.RETRY_AFTER)


async def prometheus(request: web.Request) -> web.StreamResponse:
    """GET /metrics: the Prometheus text format."""
    st = request.app[VIEW]
    now = st.clock()
    try:
        await st.metrics.refresh(st.db, now)
    except errors.DatabaseError:
        pass  # serve the last snapshot; runnerd_worker_healthy says what is wrong
    body = st.metrics.render(healthy=not st.heartbeat.problems(now),
                             last_ticks=st.scheduler.last_tick)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def status_page(request: web.Request) -> web.StreamResponse:
    """GET /status: the human status page."""
    st = request.app[VIEW]
    now = st.clock()
    try:
        data = await st.db.read(lambda tx: status.gather(tx, now))
        signed_in = await console.signed_in(request)
    except errors.DatabaseError as exc:
        return _text(503, f"database unavailable: {exc.message}")
    facts = st.heartbeat.facts(now)
    settings = st.config.settings
    configured = {"tasks": [t.name for t in settings.tasks],
                  "monitors": [m.name for m in settings.monitors]}
    return web.Response(text=status.render({**data, **configured}, facts, now,
                                           console=signed_in),
                        content_type="text/html")
