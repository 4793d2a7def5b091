"""The operations endpoints (no token): /ping/*, /health, /metrics and /status."""

from __future__ import annotations

from aiohttp import web

from runnerd import errors, metrics, monitors, status, webhook

PING_METHODS = frozenset({"GET", "POST", "HEAD"})


def add_routes(app: web.Application) -> None:
    """Register the routes."""
    app.router.add_route("*", "/ping/{name}", ping)
    app.router.add_route("*", "/ping/{name}/{kind:start|fail}", ping)
    app.router.add_route("GET", "/health", health)
    app.router.add_route("GET", "/metrics", prometheus)
    app.router.add_route("GET", "/status", status_page)


def _text(status_code: int, text: str) -> web.Response:
    return web.Response(status=status_code, text=text + "\n")


async def ping(request: web.Request) -> web.StreamResponse:
    """GET/POST /ping/{name}[/start|/fail] → 200 "OK" (404 for an unknown monitor)."""
    st = request.app[webhook.STATE]
    name = request.match_info["name"]
    if monitors.ping_monitor(st.settings, name) is None:
        return _text(404, f"no ping monitor named {name!r}")
    if request.method not in PING_METHODS:
        return web.Response(status=405, text="use GET or POST\n",
                            headers={"Allow": "GET, POST, HEAD"})
    try:
        body = await webhook.read_body(request, st.settings.listen)
    except webhook.BodyRefused as exc:
        return _text(exc.status, exc.message)
    kind = monitors.PING_STATUS[request.match_info.get("kind", "")]
    try:
        events = await monitors.ping(st.db, name, kind, body, st.clock())
    except errors.DatabaseError as exc:
        return _text(503, f"not recorded: {exc.message}")
    if events:
        if st.worker is not None:
            st.worker.wakeup.set()
        if st.monitors is not None:
            st.monitors.alerts_wakeup.set()
    return _text(200, "OK")


async def health(request: web.Request) -> web.StreamResponse:
    """GET /health → 200 with the facts when healthy, 503 with the reasons when not."""
    st = request.app[webhook.STATE]
    beat = st.heartbeat
    if beat is None:
        return web.json_response({"status": "unhealthy", "problems": ["no heartbeat"]},
                                 status=503)
    facts = beat.facts(st.clock())
    facts["monitors_last_tick"] = (None if st.monitors is None or st.monitors.last_tick is None
                                   else round(st.clock() - st.monitors.last_tick, 3))
    return web.json_response(facts, status=200 if facts["status"] == "ok" else 503)


async def prometheus(request: web.Request) -> web.StreamResponse:
    """GET /metrics: the Prometheus text format."""
    st = request.app[webhook.STATE]
    if st.metrics is None:
        return _text(404, "metrics are not enabled")
    try:
        await st.metrics.refresh(st.db, st.clock())
    except errors.DatabaseError:
        pass  # serve the last snapshot; runnerd_worker_healthy says what is wrong
    return web.Response(body=st.metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def status_page(request: web.Request) -> web.StreamResponse:
    """GET /status: the human status page."""
    st = request.app[webhook.STATE]
    now = st.clock()
    try:
        data = await st.db.read(lambda tx: status.gather(tx, now))
    except errors.DatabaseError as exc:
        return _text(503, f"database unavailable: {exc.message}")
    beat = st.heartbeat
    facts = beat.facts(now) if beat is not None else {"status": "unhealthy", "problems": []}
    return web.Response(text=status.render(data, facts, now), content_type="text/html")
