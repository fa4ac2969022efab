"""config_warnings: what `check` and `run -v` say about the callback settings."""

from __future__ import annotations

import re

import pytest

from pending_jobs import config
from pending_jobs.callbacks import Deliverer, config_warnings
from pending_jobs.errors import ConfigError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BASE = config.load({}, environ={}).replace(callback_secret=[SECRET])
GUARD_OFF = "the forgery guard allows every internal address in it"


def warnings(**settings: object) -> list[str]:
    return config_warnings(BASE.replace(**settings))


def test_good_settings_warn_nothing() -> None:
    assert warnings() == []
    assert warnings(callback_secret=[SECRET, "whsec_c2Vjb25k"]) == []


def test_no_secret() -> None:
    assert warnings(callback_secret=[]) == [
        "PENDING_JOBS_CALLBACK_SECRET is not set: callbacks are sent unsigned, so receivers cannot verify them"]


def test_bad_secrets_are_named_by_position_never_shown() -> None:
    found = warnings(callback_secret=["whsec_%%%", "whsec_", "bm9wcmVmaXg=", SECRET])
    assert found == [
        "callback secret #1: a secret is not valid base64 after 'whsec_'",
        "callback secret #2: a secret is empty",
        "callback secret #3 does not start with 'whsec_' (Standard Webhooks form)",
        "more than two callback secrets: use two only while rotating",
    ]


def test_two_secrets_are_a_rotation_three_are_too_many() -> None:
    assert warnings(callback_secret=[SECRET, SECRET]) == []
    assert warnings(callback_secret=[SECRET] * 3) == ["more than two callback secrets: use two only while rotating"]


def test_an_empty_schedule() -> None:
    assert warnings(callback_schedule=[]) == [
        "PENDING_JOBS_CALLBACK_SCHEDULE is empty: a callback that fails once is failed for good"]


@pytest.mark.parametrize("entries", [
    ["10.0.0.0/8"], ["127.0.0.1"], ["127.0.0.0/8"], ["172.16.0.0/12"], ["192.168.0.0/16"], ["100.64.0.0/10"],
    ["169.254.169.254"], ["fd00::/8"], ["fc00::/7"], ["::1"], ["fe80::/10"], ["hooks.internal"], ["hooks.internal."],
    ["8.0.0.0/8"],  # public space and not shorter than /8: the guard never needed it, but it opens nothing
    ["224.0.0.0/3"],  # multicast and reserved: no public address in it
    ["::ffff:10.0.0.0/104"],  # the IPv4-mapped spelling of 10.0.0.0/8
    ["::ffff:127.0.0.1"], ["2002:a00::/24"],  # 6to4 of 10.0.0.0/8
    ["2002:a00:1::/64"], ["2002:a00:1::1"],  # 6to4 of 10.0.0.1, with its own IPv6 subnet bits
    ["64:ff9b::a00:0/104"],  # NAT64 of 10.0.0.0/8
    ["64:ff9b:1::/48"],  # local-use NAT64: the site's own translator
    ["2001:db8::/32"],
])
def test_private_allow_lists_warn_nothing(entries: list[str]) -> None:
    assert warnings(callback_allow=entries) == []


@pytest.mark.parametrize(("entry", "what"), [
    ("0.0.0.0/0", "0.0.0.0/0: the forgery guard allows every address"),
    ("::/0", "::/0: the forgery guard allows every address"),
    ("0.0.0.0/1", f"0.0.0.0/1, which spans public IPv4 space: {GUARD_OFF}"),
    ("128.0.0.0/1", f"128.0.0.0/1, which spans public IPv4 space: {GUARD_OFF}"),
    ("10.0.0.0/7", f"10.0.0.0/7, which spans public IPv4 space: {GUARD_OFF}"),
    ("192.0.0.0/2", f"192.0.0.0/2, which spans public IPv4 space: {GUARD_OFF}"),
    ("224.0.0.0/2", f"192.0.0.0/2, which spans public IPv4 space: {GUARD_OFF}"),  # host bits set
    ("2000::/3", f"2000::/3, which spans public IPv6 space: {GUARD_OFF}"),
    ("2001::/16", f"2001::/16, which spans public IPv6 space: {GUARD_OFF}"),
    ("::/1", f"::/1, which spans public IPv6 space: {GUARD_OFF}"),
    ("::ffff:0:0/96", f"::ffff:0:0/96, which spans 0.0.0.0/0 as IPv4-mapped addresses: {GUARD_OFF}"),
    ("::ffff:0:0/97", f"::ffff:0:0/97, which spans 0.0.0.0/1 as IPv4-mapped addresses: {GUARD_OFF}"),
    ("::/8", f"::/8, which spans 0.0.0.0/0 as IPv4-mapped addresses: {GUARD_OFF}"),
    ("64:ff9b::/96", f"64:ff9b::/96, which spans 0.0.0.0/0 as NAT64 addresses: {GUARD_OFF}"),
    ("64:ff9b::/64", f"64:ff9b::/64, which spans 0.0.0.0/0 as NAT64 addresses: {GUARD_OFF}"),
    ("64:ff9b::8000:0/97", f"64:ff9b::8000:0/97, which spans 128.0.0.0/1 as NAT64 addresses: {GUARD_OFF}"),
    ("2002::/16", f"2002::/16, which spans 0.0.0.0/0 as 6to4 addresses: {GUARD_OFF}"),
    ("2002:800::/21", f"2002:800::/21, which spans 8.0.0.0/5 as 6to4 addresses: {GUARD_OFF}"),
    ("2001::/32", f"2001::/32, which spans 0.0.0.0/0 as Teredo addresses: {GUARD_OFF}"),
    ("2001:0:a00:1::/64", f"2001:0:a00:1::/64, which spans 0.0.0.0/0 as Teredo addresses: {GUARD_OFF}"),
    ("2001::ffff:ffff/97", f"2001::8000:0/97, which spans 0.0.0.0/1 as Teredo addresses: {GUARD_OFF}"),
    ("2001::/23", f"2001::/23, which spans public IPv6 space: {GUARD_OFF}"),
])
def test_broad_allow_entries_warn(entry: str, what: str) -> None:
    assert warnings(callback_allow=["10.0.0.0/8", entry, "hooks.internal"]) == [
        f"PENDING_JOBS_CALLBACK_ALLOW contains {what}"]


@pytest.mark.parametrize("entry", ["hooks.internal:8080", "http://hooks.internal", "10.0.0.0/33", "hooks internal",
                                   "*.internal"])
def test_an_allow_entry_that_is_no_network_and_no_host_name_is_refused(entry: str) -> None:
    # It was kept as a host name no callback URL's host ever equals: the allowance did nothing, `check` said ok,
    # and every callback it was meant to let through failed for good as refused.
    why = f"{entry!r} is neither a CIDR, an address nor a host name (a name goes without scheme, port or path)"
    assert warnings(callback_allow=["10.0.0.0/8", entry, "hooks.internal"]) == [
        f"PENDING_JOBS_CALLBACK_ALLOW contains {why}"]
    with pytest.raises(ConfigError, match=re.escape(f"callback_allow: {why}")):  # a run: exit 2, before any claim
        Deliverer.check(BASE.replace(callback_allow=[entry]))
    assert warnings(callback_allow=["bücher.de", "localhost", "hooks_1.internal"]) == []  # still names
