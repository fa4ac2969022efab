"""The forgery guard without a database or a network: every allow and deny rule, at its edges."""

from __future__ import annotations

import ipaddress

import pytest

from pending_jobs.callbacks import guard
from pending_jobs.callbacks.guard import Guard, Refused, blocked_reason, parse, parse_allow

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def resolving_to(*addresses: str) -> guard.Resolver:
    """A resolver that answers every name with these addresses."""
    return lambda host, port: list(addresses)


def literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# -- blocked_reason: every kind of internal address, IPv4 and IPv6 -------------------------------------

BLOCKED = {
    # IPv4
    "0.0.0.0": "an unspecified address",
    "0.1.2.3": "a private address",  # "this network" (0.0.0.0/8)
    "127.0.0.1": "a loopback address",
    "127.255.255.254": "a loopback address",
    "10.1.2.3": "a private address",
    "172.16.0.1": "a private address",
    "172.31.255.255": "a private address",
    "192.168.1.1": "a private address",
    "169.254.169.254": "a link-local address",
    "100.64.0.0": "a carrier-grade NAT address",
    "100.127.255.255": "a carrier-grade NAT address",
    "192.0.0.1": "an IETF protocol assignment (192.0.0.0/24)",
    "192.0.0.8": "an IETF protocol assignment (192.0.0.0/24)",  # Python: global
    "192.0.0.9": "an IETF protocol assignment (192.0.0.0/24)",  # PCP anycast: IANA global, refused
    "192.0.0.10": "an IETF protocol assignment (192.0.0.0/24)",  # TURN anycast: IANA global, refused
    "192.0.0.255": "an IETF protocol assignment (192.0.0.0/24)",
    "192.88.99.1": "a 6to4 relay anycast address",
    "192.0.2.1": "a private address",  # TEST-NET-1
    "198.18.0.1": "a private address",  # benchmarking
    "198.51.100.1": "a private address",
    "203.0.113.1": "a private address",
    "224.0.0.1": "a multicast address",
    "233.252.0.1": "a multicast address",
    "240.0.0.1": "a reserved address",
    "255.255.255.255": "a reserved address",
    # IPv6
    "::": "an unspecified address",
    "::1": "a loopback address",
    "fe80::1": "a link-local address",
    "fc00::1": "a private address",
    "fd12:3456::1": "a private address",
    "fec0::1": "a site-local address",  # deprecated site-local: Python calls it global
    "ff02::1": "a multicast address",
    "ff0e::1": "a multicast address",
    "::1.2.3.4": "a reserved address",  # deprecated IPv4-compatible
    "100::1": "a reserved address",  # discard-only
    "5f00::1": "a reserved address",  # SRv6 SIDs
    "2001:db8::1": "a private address",  # documentation
    "2001:2::1": "an IETF protocol assignment (2001::/23)",
    "2001:1::1": "an IETF protocol assignment (2001::/23)",  # PCP anycast
    "2001:4:112::1": "an IETF protocol assignment (2001::/23)",  # AS112-v6
    "2001:1ff:ffff::1": "an IETF protocol assignment (2001::/23)",
    "64:ff9b:1::1": "a local-use NAT64 address",
    "3fff::1": "a documentation address",
    "3fff:fff:ffff::1": "a documentation address",
    # IPv6 forms that lead to an internal IPv4 address
    "::ffff:127.0.0.1": "a loopback address (embedded in ::ffff:7f00:1)",
    "::ffff:10.0.0.1": "a private address (embedded in ::ffff:a00:1)",
    "::ffff:169.254.169.254": "a link-local address (embedded in ::ffff:a9fe:a9fe)",
    "::ffff:0.0.0.0": "an unspecified address (embedded in ::ffff:0:0)",
    "::ffff:192.0.0.8": "an IETF protocol assignment (192.0.0.0/24) (embedded in ::ffff:c000:8)",
    "64:ff9b::a00:1": "a private address (embedded in 64:ff9b::a00:1)",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1": "a loopback address (embedded in 64:ff9b::7f00:1)",
    "2002:7f00:1::": "a loopback address (embedded in 2002:7f00:1::)",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1": "a link-local address (embedded in 2002:a9fe:a9fe::1)",
    # Teredo: server 65.54.227.120 (public), client 192.0.2.45 (obfuscated; private)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "a private address (embedded in 2001:0:4136:e378:8000:63bf:3fff:fdd2)",
    # Teredo: server 10.0.0.1 (private), client 93.184.216.34 (public): both must pass
    "2001:0:a00:1::a247:27dd": "a private address (embedded in 2001:0:a00:1::a247:27dd)",
}

PUBLIC = [
    PUBLIC_V4,
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",  # just below carrier-grade NAT
    "100.128.0.0",  # just above it
    "192.0.1.255",  # just below 192.0.0.0/24
    "192.0.3.0",
    "192.31.196.1",  # AS112: globally reachable
    "172.32.0.1",  # just above 172.16.0.0/12
    "223.255.255.255",  # just below multicast
    PUBLIC_V6,
    "2001:200::1",  # just above 2001::/23
    "2001:4860:4860::8888",
    "3fff:1000::1",  # just above 3fff::/20
    "::ffff:93.184.216.34",  # IPv4-mapped public
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
    "2001:0:4136:e378::a247:27dd",  # Teredo: server 65.54.227.120, client 93.184.216.34, both public
]


@pytest.mark.parametrize("address", sorted(BLOCKED))
def test_each_internal_address_is_refused_with_its_kind(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == BLOCKED[address]
    with pytest.raises(Refused) as refused:
        Guard().check(f"http://{literal(address)}:8080/hook")
    assert str(refused.value) == f"refused: {address.lower()} is {BLOCKED[address]}; {guard.ALLOW_HINT}"


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None
    target = Guard().check(f"https://{literal(address)}/hook")
    assert target == guard.Target("https", address, 443, str(ipaddress.ip_address(address)))


def test_teredo_server_and_client_are_read_from_the_address() -> None:
    server, client = ipaddress.ip_address("2001:0:a00:1::a247:27dd").teredo  # type: ignore[union-attr,misc]
    assert (str(server), str(client)) == ("10.0.0.1", PUBLIC_V4)
    assert guard.embedded_ipv4(ipaddress.IPv6Address("2001:0:a00:1::a247:27dd")) == (server, client)
    assert guard.embedded_ipv4(ipaddress.IPv6Address("64:ff9b::5db8:d822")) == (ipaddress.IPv4Address(PUBLIC_V4),)
    assert guard.embedded_ipv4(ipaddress.IPv6Address("64:ff9b::1:5db8:d822")) == ()  # outside the /96
    assert guard.embedded_ipv4(ipaddress.IPv6Address(PUBLIC_V6)) == ()


# -- resolution: one lookup, every address judged, the first one pinned ---------------------------------


def test_a_name_with_one_internal_address_is_refused() -> None:
    with pytest.raises(Refused) as refused:
        Guard(resolver=resolving_to(PUBLIC_V4, "10.0.0.7")).check("https://hooks.example.test/x")
    # The hint names the setting, not only its variable: a config file or JobTester(callback_allow=[...]) sets it.
    assert str(refused.value) == ("refused: hooks.example.test resolves to 10.0.0.7, which is a private address; "
                                  "add it to the callback_allow setting (env PENDING_JOBS_CALLBACK_ALLOW) to allow it")


def test_the_first_address_is_pinned_and_the_lookup_gets_host_and_port() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [PUBLIC_V4, "8.8.8.8"]

    assert Guard(resolver=resolver).check("https://Hooks.Example.test./x").ip == PUBLIC_V4
    assert Guard(resolver=resolver).check("http://hooks.example.test:8080/x").port == 8080
    assert calls == [("hooks.example.test", 443), ("hooks.example.test", 8080)]


def test_a_scoped_address_from_the_resolver_is_judged_without_its_zone() -> None:
    with pytest.raises(Refused, match="fe80::1, which is a link-local address"):
        Guard(resolver=resolving_to("fe80::1%eth0")).check("http://hooks.example.test/x")


def test_resolves_once_so_a_rebinding_name_cannot_pass() -> None:
    answers = [["10.0.0.7"], [PUBLIC_V4]]
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[len(calls) - 1]

    with pytest.raises(Refused):
        Guard(resolver=resolver).check("https://rebind.example.test/x")
    assert calls == ["rebind.example.test"]


def test_the_system_resolver_reads_numeric_forms_the_guard_then_refuses() -> None:
    # getaddrinfo reads 2130706433 and 0x7f.1 as 127.0.0.1 (inet_aton): judged after the lookup.
    assert guard.system_resolver("localhost", 80)[0] in ("127.0.0.1", "::1")
    assert guard.system_resolver("2130706433", 80) == ["127.0.0.1"]
    for url in ("http://2130706433/x", "http://0x7f.1/x", "http://017700000001/x"):
        with pytest.raises(Refused, match=r"resolves to 127\.0\.0\.1, which is a loopback address"):
            Guard().check(url)


@pytest.mark.parametrize("error", [OSError("[Errno -2] Name or service not known"), UnicodeError("label too long"),
                                   ValueError("bad answer")])
def test_a_failed_lookup_is_unresolved_not_refused(error: Exception) -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise error

    with pytest.raises(guard.Unresolved) as unresolved:
        Guard(resolver=resolver).check("https://nowhere.example.test/x")
    assert str(unresolved.value) == f"cannot resolve nowhere.example.test: {error}"
    assert not isinstance(unresolved.value, Refused)


def test_an_empty_or_unreadable_answer_is_unresolved() -> None:
    with pytest.raises(guard.Unresolved, match=r"^cannot resolve nowhere\.test: no address$"):
        Guard(resolver=resolving_to()).check("https://nowhere.test/x")
    with pytest.raises(guard.Unresolved, match=r"^cannot resolve nowhere\.test: "):
        Guard(resolver=resolving_to("not-an-address")).check("https://nowhere.test/x")


def test_a_literal_address_is_never_looked_up() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("looked up")

    assert Guard(resolver=resolver).check(f"http://{PUBLIC_V4}/x").ip == PUBLIC_V4


# -- the allow list --------------------------------------------------------------------------------


def test_parse_allow_splits_networks_and_names() -> None:
    networks, names = parse_allow(["10.1.2.3/8", "127.0.0.1", "fd00::/8", "Hooks.Internal.", "::1"])
    assert [str(n) for n in networks] == ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8", "::1/128"]
    assert names == {"hooks.internal"}


def test_allowed_network_passes_and_nothing_else_does() -> None:
    allowed = Guard(["10.0.0.0/8"], resolving_to("10.0.0.7"))
    assert allowed.check("http://internal.test/x").ip == "10.0.0.7"
    assert Guard(["10.1.2.3/8"]).check("http://10.200.0.1/x").ip == "10.200.0.1"  # host bits set
    for url in ("http://127.0.0.1/x", "http://192.168.0.1/x", "http://[fd00::1]/x", "http://[::1]/x"):
        with pytest.raises(Refused):
            allowed.check(url)
    # Every address of a name must pass: one allowed and one not is refused, naming the one.
    with pytest.raises(Refused, match=r"127\.0\.0\.1, which is a loopback address"):
        Guard(["10.0.0.0/8"], resolving_to("10.0.0.7", "127.0.0.1")).check("http://internal.test/x")


def test_an_allowed_ipv4_network_covers_its_ipv4_mapped_spelling_only() -> None:
    allowed = Guard(["127.0.0.1", "10.0.0.0/8"])
    mapped = allowed.check("http://[::ffff:127.0.0.1]:9/x").ip
    assert ipaddress.ip_address(mapped) == ipaddress.ip_address("::ffff:127.0.0.1")
    assert allowed.check("http://[::ffff:10.9.9.9]/x").port == 80
    refused = [
        "::ffff:169.254.169.254",  # mapped, outside every allowed network
        "::ffff:192.168.0.1",
        "2002:a00:1::",  # 6to4 of 10.0.0.1: through a relay, not the same destination
        "2002:7f00:1::",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1: through a translator
        "64:ff9b::7f00:1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "::1",
    ]
    for address in refused:
        with pytest.raises(Refused):
            allowed.check(f"http://[{address}]/x")


def test_ipv6_allow_entries_cover_their_own_forms() -> None:
    assert Guard(["2002:a00::/24"]).check("http://[2002:a00:1::]/x").ip == "2002:a00:1::"
    assert Guard(["64:ff9b::a00:0/104"]).check("http://[64:ff9b::a00:1]/x").ip == "64:ff9b::a00:1"
    assert Guard(["::1"]).check("http://[::1]:9/x").port == 9
    assert Guard(["fd00::/8"]).check("http://[fd12::1]/x").ip == "fd12::1"
    with pytest.raises(Refused):
        Guard(["::1"]).check("http://127.0.0.1/x")  # an IPv6 entry does not cover IPv4 loopback
    with pytest.raises(Refused):
        Guard(["fd00::/8"]).check("http://[fc00::1]/x")


def test_an_allowed_name_skips_the_address_check_for_that_name_only() -> None:
    resolver = resolving_to("10.0.0.7")
    for entry, url in [("internal.test", "http://internal.test/x"), ("internal.test.", "http://internal.test/x"),
                       ("Internal.Test", "http://INTERNAL.test./x"), ("internal.test", "http://internal.test.:81/x")]:
        assert Guard([entry], resolver).check(url).ip == "10.0.0.7"
    for entry, url in [("other.test", "http://internal.test/x"), ("internal.test", "http://sub.internal.test/x"),
                       ("internal.test", "http://internal.test.evil.test/x")]:
        with pytest.raises(Refused):
            Guard([entry], resolver).check(url)


def test_an_allowed_name_is_not_an_allowed_address() -> None:
    with pytest.raises(Refused):
        Guard(["localhost"]).check("http://127.0.0.1/x")


# -- parse, host_key: every malformed form fails alone, at once ----------------------------------------

MALFORMED = {
    "http://example.com:99999/hook": "refused: the callback URL is malformed",
    "http://example.com:-1/hook": "refused: the callback URL is malformed",
    "http://example.com:http/hook": "refused: the callback URL is malformed",
    "http://[::1/x": "refused: the callback URL is malformed",
    "http://::1]/x": "refused: the callback URL is malformed",
    "http://u:p/ss@host/x": "refused: the callback URL is malformed",  # a password containing '/'
    "http://example.com:0/hook": "refused: the callback URL's port is 0",
    "ftp://example.com/x": "refused: scheme 'ftp' is not http or https",
    "file:///etc/passwd": "refused: scheme 'file' is not http or https",
    "gopher://a/": "refused: scheme 'gopher' is not http or https",
    "example.com/x": "refused: scheme 'missing' is not http or https",
    "": "refused: scheme 'missing' is not http or https",
    "http:///nohost": "refused: the callback URL has no host",
    "http://:80/x": "refused: the callback URL has no host",
    "http://./x": "refused: the callback URL has no host",
    "https:/alice:S3CRET@host/x": "refused: the callback URL has no host",
    "http://a..b/x": "refused: the callback URL's host is not a valid host name",
    "http://" + "a" * 64 + ".test/x": "refused: the callback URL's host is not a valid host name",
    "http://exa mple.com/x": "refused: the callback URL's host is not a valid host name",
    "http://exa%6dple.com/x": "refused: the callback URL's host is not a valid host name",
    "http://ex*ample.com/x": "refused: the callback URL's host is not a valid host name",
    "http://[v1.fe80::a+en1]/x": "refused: the callback URL's host is not a valid host name",
    "http://" + ".".join(["a" * 63] * 4) + "/x": "refused: the callback URL's host is not a valid host name",
}


@pytest.mark.parametrize("url", sorted(MALFORMED))
def test_malformed_urls_are_refused_at_once_and_key_to_one_constant(url: str) -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("looked up")

    with pytest.raises(Refused) as refused:
        Guard(resolver=resolver).check(url)
    assert str(refused.value) == MALFORMED[url]
    assert guard.host_key(url) == "<malformed>"


def test_host_name_problem_is_what_the_guard_and_callback_allow_ask_of_a_name() -> None:
    """Public: delivery.py's callback_allow check asks it too (it imported the private `_host_problem`)."""
    assert guard.host_name_problem("hooks.example.com") is None
    assert guard.host_name_problem("bücher.example") is None
    assert guard.host_name_problem("_hooks.example-1.test") is None
    for bad in ("a..b", "a" * 64 + ".test", "exa mple.com", "hooks.internal:8080", "http://hooks.internal", ""):
        assert guard.host_name_problem(bad) == "is not a valid host name", bad


def test_parse_defaults_and_normalises() -> None:
    assert parse("https://Hooks.Example.com./x") == ("https", "hooks.example.com", 443, None)
    assert parse("http://hooks.example.com/x") == ("http", "hooks.example.com", 80, None)
    assert parse("HTTP://hooks.example.com:8080") == ("http", "hooks.example.com", 8080, None)
    assert parse("https://[::1]:8443/x") == ("https", "::1", 8443, ipaddress.ip_address("::1"))
    assert parse("http://10.0.0.1/x")[3] == ipaddress.ip_address("10.0.0.1")
    assert parse("http://bücher.example/x")[1] == "bücher.example"  # IDNA: looked up as xn--bcher-kva
    assert parse("http://_hooks.example-1.test/x")[1] == "_hooks.example-1.test"
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters
    assert parse(f"http://{longest}/x")[1] == longest


def test_host_key_is_host_and_port() -> None:
    assert guard.host_key("https://user:pw@Hooks.Example.com./in?x=1") == "hooks.example.com:443"
    assert guard.host_key("http://hooks.example.com/in") == "hooks.example.com:80"
    assert guard.host_key("http://hooks.example.com:8080/in") == "hooks.example.com:8080"
    assert guard.host_key("http://[::1]:8080/in") == "::1:8080"
