"""`http.allow` / `http.deny` entries and the policy: pure checks, no connection is made.

Link-local targets are checked here only, on addresses and resolution results: no test sends
a packet to any address but loopback.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp import abc

from runnerd.actions import guard
from runnerd.config import targets


def policy(allow: tuple[str, ...] = (), deny: tuple[str, ...] = (),
           listen: tuple[str, int] | None = None) -> targets.Policy:
    return targets.Policy([targets.parse(a) for a in allow], [targets.parse(d) for d in deny],
                          listen)


@pytest.mark.parametrize(("text", "network", "host", "port"), [
    ("10.0.0.0/8", "10.0.0.0/8", None, None),
    ("127.0.0.1", "127.0.0.1/32", None, None),
    ("127.0.0.1:6379", "127.0.0.1/32", None, 6379),
    ("fc00::/7", "fc00::/7", None, None),
    ("::1", "::1/128", None, None),
    ("[::1]:8080", "::1/128", None, 8080),
    ("[fe80::/10]", "fe80::/10", None, None),
    ("::ffff:10.0.0.0/104", "10.0.0.0/8", None, None),  # IPv4-mapped: checked as IPv4
    ("API.Example.com.", None, "api.example.com", None),
    ("*.example.com:8443", None, ".example.com", 8443),
])
def test_entries_parse(text: str, network: str | None, host: str | None,
                       port: int | None) -> None:
    entry = targets.parse(text)
    assert (str(entry.network) if entry.network else None, entry.host, entry.port) == (
        network, host, port)


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1/8", "has host bits set"),
    ("300.1.2.3", "does not appear to be an IPv4 or IPv6"),
    ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
    ("example.com:http", "the port must be a number"),
    ("exa mple.com", "is not an address, a network"),
    ("*", "is not an address, a network"),
    ("bücher.example", "xn-- form"),
    ("", "is not an address"),
])
def test_bad_entries_say_why(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        targets.parse(text)


def test_link_local_is_denied_by_default() -> None:
    p = targets.Policy()
    for host in ("169.254.169.254", "fe80::1", "::ffff:169.254.169.254"):
        why = p.refusal(None, host, 80)
        assert why is not None and "is link-local, denied by default" in why, host
    assert p.refusal("metadata.test", "169.254.169.254", 80) == (
        "metadata.test (169.254.169.254:80) is link-local, denied by default "
        "(http.allow can allow it)")
    assert p.refusal(None, "127.0.0.1", 80) is None  # loopback only when denied
    assert policy(allow=("169.254.169.254",)).refusal(None, "169.254.169.254", 80) is None


def test_deny_entries_and_allow_wins() -> None:
    p = policy(allow=("127.0.0.2", "127.0.0.3:9000", "ok.internal.test"),
               deny=("127.0.0.0/8", "::1", "*.internal.test", "blocked.test:443"))
    assert p.refusal(None, "127.0.0.1", 80) == (
        "127.0.0.1:80 is denied by http.deny entry '127.0.0.0/8'")
    assert p.refusal(None, "::ffff:127.0.0.1", 80) is not None  # IPv4-mapped IPv6
    assert p.refusal(None, "::1", 80) == "[::1]:80 is denied by http.deny entry '::1'"
    assert p.refusal(None, "127.0.0.2", 80) is None
    assert p.refusal(None, "127.0.0.3", 9000) is None
    assert p.refusal(None, "127.0.0.3", 9001) is not None  # the allow names another port
    assert p.refusal("a.internal.test", "192.0.2.1", 80) is not None
    assert p.refusal("internal.test", "192.0.2.1", 80) is None  # a suffix, not the name
    assert p.refusal("ok.internal.test", "10.0.0.1", 80) is None
    assert p.refusal("blocked.test", "192.0.2.1", 443) is not None
    assert p.refusal("blocked.test", "192.0.2.1", 80) is None


def test_the_daemons_listener_is_denied_by_default() -> None:
    p = targets.Policy(listen=("127.0.0.1", 8787))
    why = p.refusal(None, "127.0.0.1", 8787)
    assert why == ("127.0.0.1:8787 is the daemon's own listener, denied by default "
                   "(an http.allow entry with its port can allow it)")
    assert p.refusal(None, "::ffff:127.0.0.1", 8787) is not None
    assert p.refusal(None, "0.0.0.0", 8787) is not None  # 0.0.0.0 reaches this machine
    assert p.refusal(None, "127.0.0.1", 8788) is None
    assert p.refusal(None, "127.0.0.2", 8787) is None  # not where this daemon listens
    everywhere = targets.Policy(listen=("0.0.0.0", 8787))
    assert everywhere.refusal(None, "127.0.0.2", 8787) is not None  # any local address
    assert everywhere.refusal(None, "::1", 8787) is not None
    assert everywhere.refusal(None, "192.0.2.1", 8787) is None  # TEST-NET: not this machine
    named = targets.Policy(listen=("localhost", 8787))
    assert named.refusal(None, "127.0.0.1", 8787) is not None
    assert policy(allow=("127.0.0.1:8787",), listen=("127.0.0.1", 8787)).refusal(
        None, "127.0.0.1", 8787) is None


def test_a_broad_allow_does_not_open_the_daemons_listener() -> None:
    """Allowing loopback for a local service keeps /api and /ping closed to tasks."""
    p = policy(allow=("127.0.0.0/8", "localhost"), listen=("127.0.0.1", 8787))
    assert p.refusal(None, "127.0.0.1", 6379) is None
    assert p.refusal("localhost", "127.0.0.1", 8787) is not None
    assert p.refusal(None, "127.0.0.1", 8787) is not None
    assert policy(allow=("127.0.0.0/8:8787",), listen=("127.0.0.1", 8787)).refusal(
        None, "127.0.0.1", 8787) is None


class Fixed(abc.AbstractResolver):
    """Resolution results as a DNS server could give them: nothing is connected to."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[abc.ResolveResult]:
        return [{"hostname": host, "host": h, "port": port, "proto": 0, "flags": 0,
                 "family": socket.AF_INET6 if ":" in h else socket.AF_INET} for h in self.hosts]

    async def close(self) -> None:
        pass


async def resolved(p: targets.Policy, *hosts: str) -> Any:
    resolver = guard.GuardedResolver(p)
    await resolver.inner.close()
    resolver.inner = Fixed(*hosts)
    return [r["host"] for r in await resolver.resolve("metadata.test", 80)]


async def test_resolver_keeps_allowed_addresses_and_refuses_when_none_is_left() -> None:
    p = targets.Policy()
    with pytest.raises(guard.Refused, match=r"metadata.test \(169.254.169.254:80\) is link-local"):
        await resolved(p, "169.254.169.254")
    with pytest.raises(guard.Refused, match=r"\(\[fe80::1\]:80\) is link-local"):
        await resolved(p, "fe80::1", "169.254.0.1")
    assert await resolved(p, "169.254.169.254", "192.0.2.7") == ["192.0.2.7"]
