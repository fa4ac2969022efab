"""The forgery guard: resolve a callback's host once, refuse internal addresses, pin the one checked.

The address returned is the one the request connects to (see transport.py), so a name that resolves
to a public address now and to 127.0.0.1 a moment later (DNS rebinding) cannot slip past.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
"""host, port -> IP addresses as strings; tests replace the system resolver with their own."""

CGNAT = ipaddress.ip_network("100.64.0.0/10")
ALLOW_HINT = "add it to PENDING_JOBS_CALLBACK_ALLOW to allow it"


class Refused(Exception):
    """The callback URL may not be requested; the message says why (never includes the query)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one request goes: the URL's scheme, host and port, and the checked address to connect to."""

    scheme: str
    host: str
    port: int
    ip: str


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@functools.lru_cache(maxsize=4096)  # a pure function of the address; the lookup is never cached
def blocked_reason(ip: IP) -> str | None:
    """Why an address is internal (a kind of address), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 spelling of an IPv4 address is judged as that IPv4 address.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            reason = blocked_reason(embedded)
            return f"{reason} (embedded in {ip})" if reason else None
    checks = [
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.version == 4 and ip in CGNAT, "a carrier-grade NAT address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (getattr(ip, "is_site_local", False), "a site-local address"),
        (not ip.is_global, "not a public address"),
    ]
    return next((reason for hit, reason in checks if hit), None)


def parse_allow(entries: Sequence[str]) -> tuple[list[Network], set[str]]:
    """Split PENDING_JOBS_CALLBACK_ALLOW into networks (CIDRs or single addresses) and host names."""
    networks: list[Network] = []
    names: set[str] = set()
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return networks, names


@functools.lru_cache(maxsize=4096)  # a pure function of the URL; only the resolution must happen every time
def parse(url: str) -> tuple[str, str, int, IP | None]:
    """(scheme, host, port, the host as an address if it is one) of a callback URL; raises Refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("refused: the callback URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused(f"refused: scheme {scheme or 'missing'!r} is not http or https")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise Refused("refused: the callback URL has no host")
    try:
        literal: IP | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    return scheme, host, port or (443 if scheme == "https" else 80), literal


class Guard:
    """Checks callback URLs against the blocked ranges and the allow list."""

    def __init__(self, allow: Sequence[str] = (), resolver: Resolver | None = None) -> None:
        self.networks, self.names = parse_allow(allow)
        self.resolver = resolver or system_resolver

    def _allowed(self, ip: IP) -> bool:
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(ip in net or (mapped is not None and mapped in net) for net in self.networks)

    def check(self, url: str) -> Target:
        """Resolve once and return the address to connect to; raise Refused when it is not allowed."""
        scheme, host, port, literal = parse(url)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
            except (OSError, UnicodeError, ValueError) as error:
                raise Refused(f"refused: cannot resolve {host}: {error}") from None
        if not addresses:
            raise Refused(f"refused: {host} has no address")
        if host not in self.names:
            # Every address must pass: a name with one public and one private address is refused.
            for ip in addresses:
                reason = blocked_reason(ip)
                if reason and not self._allowed(ip):
                    shown = host if str(ip) == host else f"{host} resolves to {ip}, which"
                    raise Refused(f"refused: {shown} is {reason}; {ALLOW_HINT}")
        return Target(scheme, host, port, str(addresses[0]))


@functools.lru_cache(maxsize=4096)  # called several times per attempt (logs, circuit breaker)
def redact(url: str) -> str:
    """A URL safe to log or store: scheme, host, port and path; no user info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"
