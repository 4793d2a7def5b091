"""Where the http action may connect: `http.allow`, `http.deny` and the defaults.

An entry is an address or network (`10.0.0.0/8`, `::1`, `fc00::/7`), a host name
(`api.example.com`) or a suffix (`*.example.com`: its subdomains, not itself), each with an
optional port (`127.0.0.1:6379`, `[::1]:6379`, `*.example.com:8443`). A connection, known by the
URL's host name, the resolved address actually connected to and the port, is refused when a
deny entry or a default matches it and no allow entry does: allow wins. The defaults deny
link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services) and the daemon's own
listener; the listener is allowed only by an allow entry that names its port. An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is checked as the IPv4 address.

Stdlib only: `config` validates entries with `parse`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from collections.abc import Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAME = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::([^:]*))?$")


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One entry of `http.allow` or `http.deny`: a network or a host name, maybe a port."""

    text: str  #: as written, for messages
    network: Network | None = None
    host: str | None = None  #: an exact name, or ".example.com" for `*.example.com`
    port: int | None = None

    def matches(self, name: str | None, address: Address, port: int) -> bool:
        """Whether a connection to `address`:`port` for the URL host `name` is this entry's."""
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        if name is None or self.host is None:
            return False
        return name.endswith(self.host) if self.host.startswith(".") else name == self.host


def parse(text: str) -> Entry:
    """An entry from its text; ValueError saying what is wrong."""
    spec, port = _split_port(text.strip())
    try:
        network = _unmap_network(ipaddress.ip_network(spec))
    except ValueError as exc:
        if "/" in spec or ":" in spec or spec.replace(".", "").isdigit():
            raise ValueError(f"{text!r}: {exc}") from None
    else:
        return Entry(text, network=network, port=port)
    name = spec.lower().rstrip(".")
    if not _NAME.match(name):
        raise ValueError(f"{text!r} is not an address, a network (10.0.0.0/8), a host name or "
                         "*.suffix (internationalized names in their xn-- form)")
    return Entry(text, host=name[1:] if name.startswith("*.") else name, port=port)


def _split_port(text: str) -> tuple[str, int | None]:
    """`[v6]:port`, `v4:port` or `name:port` → (the rest, the port); an IPv6 entry without
    brackets has no port."""
    bracketed = _BRACKETED.match(text)
    if bracketed:
        spec, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        spec, port = text.split(":")
    else:
        return text, None
    if port is None:
        return spec, None
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return spec, int(port)


def _unmap_network(network: Network) -> Network:
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


def address(text: str) -> Address:
    """An address as the rules see it (IPv4-mapped IPv6 as IPv4); ValueError if not one."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_local(ip: Address) -> bool:
    """Whether `ip` is an address of this machine (it can be bound: no packet is sent)."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(ip), 0))
        except OSError:
            return False
    return True


class Policy:
    """The rules of one daemon: `refusal` says why a connection is refused, or None."""

    def __init__(self, allow: Sequence[Entry] = (), deny: Sequence[Entry] = (),
                 listen: tuple[str, int] | None = None) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.listen_port = listen[1] if listen else None
        try:
            self.listen_ip: Address | None = address(listen[0]) if listen else None
        except ValueError:  # a host name: it listens on some local addresses
            self.listen_ip = None

    def refusal(self, name: str | None, host: str, port: int) -> str | None:
        """Why connecting to address `host`:`port` is refused (None: it is allowed). `name` is
        the URL's host name (None when the URL names an address)."""
        ip = address(host)
        if name is not None:
            name = name.lower().rstrip(".")
        allowed = [entry for entry in self.allow if entry.matches(name, ip, port)]
        # The daemon's own listener yields only to an entry naming its port: allowing a range
        # such as 127.0.0.0/8 for a local service must not open /api and /ping to tasks.
        if allowed and (any(e.port is not None for e in allowed)
                        or not self._is_listener(ip, port)):
            return None
        shown = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        if name is not None and name != str(ip):
            shown = f"{name} ({shown})"
        for entry in self.deny:
            if entry.matches(name, ip, port):
                return f"{shown} is denied by http.deny entry {entry.text!r}"
        if any(ip.version == net.version and ip in net for net in LINK_LOCAL):
            return f"{shown} is link-local, denied by default (http.allow can allow it)"
        if self._is_listener(ip, port):
            return (f"{shown} is the daemon's own listener, denied by default "
                    "(an http.allow entry with its port can allow it)")
        return None

    def _is_listener(self, ip: Address, port: int) -> bool:
        if port != self.listen_port:
            return False
        if ip.is_unspecified:  # connecting to 0.0.0.0 or :: reaches this machine
            return True
        if self.listen_ip is not None and not self.listen_ip.is_unspecified:
            return ip == self.listen_ip
        return is_local(ip)  # listening on every address, or on a host name's
