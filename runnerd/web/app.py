"""The aiohttp application: every route of runnerd, each handler group with its own view.

This module imports the handler modules (webhooks, api, endpoints, console), which import nothing of it:
the web layer's imports flow one way.
"""

from __future__ import annotations

from aiohttp import web

from runnerd.web import api, console, context, endpoints, webhooks


def make_app(hooks: context.Webhooks, admin: context.Api, ops: context.Ops) -> web.Application:
    """The application; the body limit is `listen.max_body_bytes` (a restart-only setting)."""
    app = web.Application(client_max_size=hooks.config.settings.listen.max_body_bytes)
    webhooks.add_routes(app, hooks)
    api.add_routes(app, admin)
    endpoints.add_routes(app, ops)
    console.add_routes(app, admin)
    return app
