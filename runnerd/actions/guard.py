"""The http action's connections: every one checked against `targets.Policy`, hop by hop.

- Host names: `client_session` gives the aiohttp session a resolver (`GuardedResolver`) that
  keeps only the resolved addresses the policy allows and raises `Refused` when none is left.
  aiohttp connects only to what the resolver returned, so a name that resolves to an allowed
  address now and to a denied one later (DNS rebinding) is checked each time it is resolved;
  its DNS cache holds the filtered list, keyed by host and port like the rules.
- IP literals: aiohttp connects to them without asking the resolver (a host with a ':' or only
  digits and dots), so `check_literal` checks each hop's URL before its request.
- Redirects: the action follows them itself (`Hop.follow`), so every hop goes through both
  checks, and a hop to another origin drops the secret-looking headers (`is_secret`).
- Pooled connections: a kept-alive connection is reused only for the same host, port and TLS
  settings, and was checked when it was opened; the rules change only with a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import yarl
from aiohttp import abc

from runnerd.config import targets


class Refused(Exception):
    """The policy refuses the target; the text says why."""


class GuardedResolver(abc.AbstractResolver):
    """aiohttp's default resolver, keeping only the addresses `policy` allows."""

    def __init__(self, policy: targets.Policy) -> None:
        self.policy = policy
        self.inner = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[abc.ResolveResult]:
        """The allowed addresses of `host`; Refused when it resolves to denied ones only."""
        found = await self.inner.resolve(host, port, family)
        why = [self.policy.refusal(host, r["host"], r["port"]) for r in found]
        kept = [r for r, reason in zip(found, why, strict=True) if reason is None]
        if found and not kept:
            raise Refused(why[0])
        return kept

    async def close(self) -> None:
        """Close the default resolver."""
        await self.inner.close()


@contextlib.asynccontextmanager
async def client_session(policy: targets.Policy, timeout: aiohttp.ClientTimeout
                         ) -> AsyncIterator[aiohttp.ClientSession]:
    """The daemon's shared session, resolving host names through `GuardedResolver`."""
    resolver = GuardedResolver(policy)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver),
                                         timeout=timeout) as session:
            yield session
    finally:
        await resolver.close()


def check_literal(policy: targets.Policy, url: yarl.URL) -> None:
    """Refused when `url` names an address (as aiohttp tells them) that `policy` denies."""
    host = url.raw_host or ""
    if ":" not in host and not host.replace(".", "").isdigit():
        return  # a host name: the resolver checks its addresses
    port = url.port or 0
    try:
        why = policy.refusal(None, host, port)
    except ValueError:
        why = f"{host} is not an address runnerd can check"
    if why is not None:
        raise Refused(why)


@dataclasses.dataclass(frozen=True, slots=True)
class Hop:
    """One request of an exchange: the first, or one a redirect asks for."""

    method: str
    url: yarl.URL
    headers: Mapping[str, str]
    data: bytes | None

    def follow(self, response: aiohttp.ClientResponse,
               is_secret: Callable[[str], bool]) -> Hop | None:
        """The request `response` redirects to (aiohttp's rules), or None when it does not
        redirect. A 303 (and a 301 or 302 to a POST) becomes a GET without a body; another
        origin (scheme, host or port) gets no header that `is_secret`."""
        if response.status not in {301, 302, 303, 307, 308}:
            return None
        location = response.headers.get("Location") or response.headers.get("URI")
        if location is None:
            return None
        try:
            target = self.url.join(yarl.URL(location))
        except ValueError:
            raise aiohttp.InvalidUrlRedirectClientError(location, "not a URL") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise aiohttp.NonHttpUrlRedirectClientError(location)
        method, data, headers = self.method, self.data, dict(self.headers)
        if (response.status == 303 and method != "HEAD") or (
                response.status in (301, 302) and method == "POST"):
            method, data = "GET", None
            headers = {k: v for k, v in headers.items()
                       if k.lower() not in ("content-type", "content-length")}
        if target.origin() != self.url.origin():
            headers = {k: v for k, v in headers.items() if not is_secret(k)}
        return Hop(method, target, headers, data)
