"""The forgery guard: resolve a callback's host once, refuse internal addresses, pin the one checked.

The address returned is the one the request connects to (see transport.py), so a name that resolves
to a public address now and to 127.0.0.1 a moment later (DNS rebinding) cannot slip past.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
"""host, port -> IP addresses as strings; tests replace the system resolver with their own."""

ALLOW_HINT = "add it to the callback_allow setting (env PENDING_JOBS_CALLBACK_ALLOW) to allow it"
MALFORMED_KEY = "<malformed>"
MALFORMED_URL = "<malformed URL>"
HIDDEN_URL = "<URL hidden: '@' after its host>"
HOST_NAME = re.compile(rb"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")  # after IDNA: the characters getaddrinfo can look up
MAX_HOST_NAME = 253  # characters of a DNS name, dots included (RFC 1035)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
GUARD_OFF = "the forgery guard allows every internal address in it"
PUBLIC_V6 = ipaddress.IPv6Network("2000::/3")  # global unicast: where every public IPv6 address is
NOT_PUBLIC_V4 = ipaddress.IPv4Network("224.0.0.0/3")  # multicast and reserved: the only /3 with nothing public
# An allow entry shorter than this that reaches public addresses opens far more than a site's own
# hosts: most likely a mistake for "allow everything".
BROAD_V4, BROAD_V6 = 8, 32
# IPv6 forms that lead to an IPv4 address: (prefix, where the IPv4 bits start, inverted, name).
EMBEDDINGS: tuple[tuple[ipaddress.IPv6Network, int, bool, str], ...] = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 96, False, "IPv4-mapped"),
    (NAT64, 96, False, "NAT64"),
    (SIXTOFOUR, 16, False, "6to4"),
    (ipaddress.IPv6Network("2001::/32"), 96, True, "Teredo"),  # the client, in the last 32 bits, inverted
)

# Blocks of the IANA special-purpose registries (RFC 6890) that Python's is_private/is_global tables
# call global, or call global on some Python releases but not on others (the fix of CVE-2024-4032
# changed them), pinned here so the guard answers the same on every Python:
SPECIAL: tuple[tuple[Network, str], ...] = (
    (ipaddress.IPv4Network("100.64.0.0/10"), "a carrier-grade NAT address"),  # RFC 6598, shared space
    # IETF protocol assignments. IANA calls 192.0.0.9 (PCP anycast) and 192.0.0.10 (TURN anycast)
    # globally reachable, but an anycast address reaches the nearest such server, typically the site's
    # own gateway: an internal host. So the whole /24 is refused (192.0.0.8, the dummy address, and
    # any future assignment included); PENDING_JOBS_CALLBACK_ALLOW opens it.
    (ipaddress.IPv4Network("192.0.0.0/24"), "an IETF protocol assignment (192.0.0.0/24)"),
    # Deprecated 6to4 relay anycast (RFC 7526): reaches the nearest relay, not a receiver.
    (ipaddress.IPv4Network("192.88.99.0/24"), "a 6to4 relay anycast address"),
    # IETF protocol assignments: its globally reachable exceptions (PCP/TURN/DNS-SD anycast, AMT,
    # AS112, ORCHIDv2, DRIP) are anycast services or identifiers, never a callback receiver. Teredo
    # (2001::/32) is inside but judged by its embedded IPv4 addresses before this table is read.
    (ipaddress.IPv6Network("2001::/23"), "an IETF protocol assignment (2001::/23)"),
    (ipaddress.IPv6Network("64:ff9b:1::/48"), "a local-use NAT64 address"),  # RFC 8215: a site's own translator
    (ipaddress.IPv6Network("3fff::/20"), "a documentation address"),  # RFC 9637
)


class Refused(Exception):
    """The callback URL may not be requested; the message says why (never includes the query)."""


class Unresolved(Exception):
    """The host name did not resolve now: retried on the callback schedule (the message says why)."""


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


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address leads to: IPv4-mapped, NAT64, 6to4, or Teredo server and client."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    # NAT64 (RFC 6052): DNS64 gives every IPv4-only receiver such an address, so refusing the prefix
    # would cut IPv6-only hosts off from them; the translator sends the packet to the embedded address,
    # so judging that address protects exactly as much as for a plain IPv4 one.
    if ip in NAT64:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    # Teredo: both must pass; a private Teredo server means a site's own deployment.
    return ip.teredo or ()


def _blocked_reason(ip: IP) -> str | None:
    """Why an address is internal (a kind of address), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded:
            # An IPv6 address that leads to an IPv4 address is judged as that IPv4 address.
            reason = next(filter(None, map(blocked_reason, embedded)), None)
            return f"{reason} (embedded in {ip})" if reason else None
    checks = [
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        *((ip in net, reason) for net, reason in SPECIAL),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (not ip.is_global, "not a public address"),  # whatever a later Python adds to its tables
    ]
    return next((reason for hit, reason in checks if hit), None)


# Caches are applied by call, not as decorators, because mutmut leaves decorated functions unmutated.
blocked_reason = functools.lru_cache(maxsize=4096)(_blocked_reason)  # pure; the lookup is never cached


def parse_allow(entries: Sequence[str]) -> tuple[list[Network], set[str]]:
    """Split PENDING_JOBS_CALLBACK_ALLOW into networks (CIDRs or single addresses) and host names."""
    networks: list[Network] = []
    names: set[str] = set()
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))  # 10.1.2.3/8 means 10.0.0.0/8
        except ValueError:
            names.add(entry.lower().removesuffix("."))
    return networks, names


def _ipv4_part(net: ipaddress.IPv6Network, prefix: ipaddress.IPv6Network, start: int,
               inverted: bool) -> ipaddress.IPv4Network | None:
    """The IPv4 addresses that the addresses of net lead to through one embedding, or None."""
    if not net.overlaps(prefix):
        return None
    bits = int(net.network_address) >> (96 - start) & 0xFFFFFFFF
    if inverted:
        bits = ~bits & 0xFFFFFFFF
    # A net that holds the whole prefix (or more) ends before the IPv4 bits start: every IPv4 address.
    return ipaddress.IPv4Network((bits, min(max(net.prefixlen - start, 0), 32)), strict=False)


def broad_allow(net: Network) -> str | None:
    """Why an allow entry opens public address space wholesale (the end of a warning), or None."""
    if net.prefixlen == 0:
        return ": the forgery guard allows every address"
    if isinstance(net, ipaddress.IPv4Network):
        if net.prefixlen < BROAD_V4 and not net.subnet_of(NOT_PUBLIC_V4):
            return f", which spans public IPv4 space: {GUARD_OFF}"
        return None
    # 6to4 lies inside 2000::/3, but what a 6to4 entry reaches is its IPv4 part, judged below.
    if net.prefixlen < BROAD_V6 and net.overlaps(PUBLIC_V6) and not net.subnet_of(SIXTOFOUR):
        return f", which spans public IPv6 space: {GUARD_OFF}"
    for prefix, start, inverted, name in EMBEDDINGS:
        ipv4 = _ipv4_part(net, prefix, start, inverted)
        if ipv4 is not None and broad_allow(ipv4):
            return f", which spans {ipv4} as {name} addresses: {GUARD_OFF}"
    return None


def host_name_problem(host: str) -> str | None:
    """Why a host name (not an address) cannot be looked up, or None: the end of a sentence naming the host."""
    try:
        ascii_host = host.encode("idna")
    except UnicodeError:  # an empty label or one over 63 characters
        return "is not a valid host name"
    if len(ascii_host) > MAX_HOST_NAME or not HOST_NAME.fullmatch(ascii_host):
        return "is not a valid host name"
    return None


def _parse(url: str) -> tuple[str, str, int, IP | None]:
    """(scheme, host, port, the host as an address if it is one) of a callback URL; raises Refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number 0..65535, unbalanced brackets
        raise Refused("refused: the callback URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused(f"refused: scheme {scheme or 'missing'!r} is not http or https")
    host = (parts.hostname or "").removesuffix(".")
    if not host:
        raise Refused("refused: the callback URL has no host")
    if port == 0:
        raise Refused("refused: the callback URL's port is 0")
    try:
        literal: IP | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        problem = host_name_problem(host)
        if problem:
            raise Refused(f"refused: the callback URL's host {problem}") from None
    return scheme, host, port or (443 if scheme == "https" else 80), literal


parse = functools.lru_cache(maxsize=4096)(_parse)  # pure; only the resolution must happen every time


def host_key(url: str) -> str:
    """The circuit breaker's key of a URL: `host:port`, or "<malformed>" for a URL that does not parse; never raises."""
    try:
        _scheme, host, port, _literal = parse(url)
    except Refused:
        return MALFORMED_KEY
    return f"{host}:{port}"


class Guard:
    """Checks callback URLs against the blocked ranges and the allow list."""

    def __init__(self, allow: Sequence[str] = (), resolver: Resolver | None = None) -> None:
        self.networks, self.names = parse_allow(allow)
        self.resolver = resolver or system_resolver

    def _allowed(self, ip: IP) -> bool:
        # An allowed IPv4 network also covers its IPv4-mapped spelling (the same socket destination),
        # but not its 6to4, NAT64 or Teredo forms: those go through a relay or translator, so they
        # must be allowed by an IPv6 entry of their own.
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(ip in net or (mapped is not None and mapped in net) for net in self.networks)

    def check(self, url: str) -> Target:
        """Resolve once and return the address to connect to.

        Raises Refused (for good: malformed URL, other scheme, internal address) or Unresolved (the
        lookup failed or gave nothing: retried later).
        """
        scheme, host, port, literal = parse(url)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
            except (OSError, ValueError) as error:  # UnicodeError is a ValueError
                raise Unresolved(f"cannot resolve {host}: {error}") from None
        if not addresses:
            raise Unresolved(f"cannot resolve {host}: no address")
        if host not in self.names:
            # Every address must pass: a name with one public and one private address is refused.
            for ip in addresses:
                reason = blocked_reason(ip)
                if reason and not self._allowed(ip):
                    shown = host if literal is not None else f"{host} resolves to {ip}, which"
                    raise Refused(f"refused: {shown} is {reason}; {ALLOW_HINT}")
        return Target(scheme, host, port, str(addresses[0]))


def _redact(url: str) -> str:
    """A URL safe to log or store: scheme, host, port and path; never user info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return MALFORMED_URL
    if not host:
        # No authority (`https:/user:pw@host`, or `user:pw@host`, where the user is the "scheme"):
        # everything after the scheme may be user info.
        return MALFORMED_URL
    if "@" in parts.path + parts.query + parts.fragment:
        # The authority ends at the first /, ? or #, so in `http://user:12/pw@host/` the "host" is the
        # user, the "port" and "path" the password: an '@' after the host may mean user info was cut.
        return HIDDEN_URL
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


redact = functools.lru_cache(maxsize=4096)(_redact)  # called several times per attempt (logs, circuit breaker)
