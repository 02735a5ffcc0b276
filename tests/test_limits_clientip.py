"""The client address: socket peer, or X-Forwarded-For only behind trusted proxies."""

from __future__ import annotations

import pytest

from proxy.limits.clientip import (
    TrustedProxies,
    client_ip,
    limit_key,
    parse_ip,
    scope_client_ip,
)
from shared.config import Settings
from shared.errors import ConfigError

LB = TrustedProxies.parse(["10.0.0.0/8", "fd00::/8"])
NONE = TrustedProxies.parse([])
UNIX = TrustedProxies.parse(["unix", "10.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        # no trusted proxies: the header is never believed
        ("203.0.113.7", None, NONE, "203.0.113.7"),
        ("203.0.113.7", "1.2.3.4", NONE, "203.0.113.7"),
        # an untrusted peer cannot spoof its address, even claiming to be a trusted hop
        ("203.0.113.7", "1.2.3.4", LB, "203.0.113.7"),
        ("203.0.113.7", "10.0.0.5, 1.2.3.4", LB, "203.0.113.7"),
        # a trusted peer: the rightmost untrusted hop is the client
        ("10.0.0.2", "198.51.100.9", LB, "198.51.100.9"),
        ("10.0.0.2", "198.51.100.9, 10.1.1.1", LB, "198.51.100.9"),
        ("10.0.0.2", "198.51.100.9,10.1.1.1,10.2.2.2", LB, "198.51.100.9"),
        # what the client put left of the real hop is ignored (spoofing through the LB)
        ("10.0.0.2", "6.6.6.6, 198.51.100.9", LB, "198.51.100.9"),
        ("10.0.0.2", "10.9.9.9, 198.51.100.9", LB, "198.51.100.9"),
        # trusted peer without a header, or with an empty one: the peer itself
        ("10.0.0.2", None, LB, "10.0.0.2"),
        ("10.0.0.2", "", LB, "10.0.0.2"),
        # garbage ends the walk at the last trusted hop: it never becomes a key of its own
        ("10.0.0.2", "not-an-ip", LB, "10.0.0.2"),
        ("10.0.0.2", "198.51.100.9, garbage, 10.1.1.1", LB, "10.1.1.1"),
        # every hop trusted: the leftmost is the nearest to the client we know
        ("10.0.0.2", "10.3.3.3, 10.4.4.4", LB, "10.3.3.3"),
        # ports and brackets as some proxies write them; IPv4-mapped IPv6 unwrapped
        ("10.0.0.2", "198.51.100.9:4711", LB, "198.51.100.9"),
        ("10.0.0.2", "[2001:db8::1]:443", LB, "2001:db8::1"),
        ("10.0.0.2", "2001:db8::1", LB, "2001:db8::1"),
        ("10.0.0.2", "::ffff:198.51.100.9", LB, "198.51.100.9"),
        ("fd00::1", "198.51.100.9", LB, "198.51.100.9"),
        ("::ffff:10.0.0.2", "198.51.100.9", LB, "198.51.100.9"),
        # a Unix-socket peer is trusted only when TRUSTED_PROXIES says `unix`
        (None, "198.51.100.9", NONE, ""),
        (None, "198.51.100.9", UNIX, "198.51.100.9"),
        (None, "198.51.100.9, 10.0.0.1", UNIX, "198.51.100.9"),
        (None, None, UNIX, ""),
    ],
)
def test_client_ip(
    peer: str | None, xff: str | None, trusted: TrustedProxies, expected: str
) -> None:
    assert client_ip(peer, xff, trusted) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("::1", "::1"),
        ("[::1", None),
        ("1.2.3", None),
        ("", None),
        ("unknown", None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    parsed = parse_ip(text)
    assert (str(parsed) if parsed is not None else None) == expected


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("198.51.100.9", "198.51.100.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # same subscriber, same bucket
        ("::ffff:198.51.100.9", "198.51.100.9"),
    ],
)
def test_limit_key(ip: str, key: str) -> None:
    assert limit_key(ip) == key


def test_trusted_proxies_setting() -> None:
    settings = Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.10 ,unix"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.10", "unix")
    trusted = TrustedProxies.parse(settings.trusted_proxies)
    assert client_ip("192.168.1.10", "198.51.100.9", trusted) == "198.51.100.9"
    assert client_ip("192.168.1.11", "198.51.100.9", trusted) == "192.168.1.11"
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES must be a comma-separated list"):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8,nginx"})


def test_scope_client_ip_joins_forwarded_headers_in_order() -> None:
    headers = [
        (b"host", b"proxy"),
        (b"x-forwarded-for", b"6.6.6.6, 198.51.100.9"),
        (b"x-forwarded-for", b"10.1.1.1"),
    ]
    scope = {"type": "http", "client": ("10.0.0.2", 51000), "headers": headers}
    assert scope_client_ip(scope, LB) == "198.51.100.9"
    assert scope_client_ip(scope, NONE) == "10.0.0.2"
    unix_scope = {"type": "http", "client": None, "headers": headers}
    assert scope_client_ip(unix_scope, NONE) == ""
    assert scope_client_ip(unix_scope, UNIX) == "10.1.1.1"  # UNIX does not trust 10.1.1.1
