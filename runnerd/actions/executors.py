"""The executors of every action type, built with what each needs: `build(settings, session,
policy)` for the daemon, `build(settings)` for the command line and previews (able to validate
and redact, never to perform: no session, no connection).

A module of its own, so the package (`actions/__init__.py`: what an executor is) imports none of
the executors, which import it.
"""

from __future__ import annotations

import aiohttp

from runnerd import actions, config
from runnerd.actions import cache, echo, email, event, http
from runnerd.config import targets


def build(settings: config.Settings, session: aiohttp.ClientSession | None = None,
          policy: targets.Policy | None = None) -> actions.Registry:
    """One executor per action type. With a `session` (resolving through `policy`: the http
    guard) the http action performs and the email action downloads its `url` attachments;
    without one they only validate and redact."""
    web = http.HttpExecutor(session, settings.http, policy)  # type: ignore[arg-type]
    reg = actions.Registry()
    for executor in (cache.CacheExecutor(), echo.EchoExecutor(), event.EventExecutor(),
                     email.EmailExecutor(settings.email,
                                         fetch=web.download if session is not None else None),
                     web):
        reg.add(executor)
    return reg
