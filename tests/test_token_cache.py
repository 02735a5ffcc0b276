"""The token cache's clock rules: the normal TTL, the outage TTL, and what /ready asks of it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.auth import Credential, TokenCache
from proxy.limits.admission import TokenLimits
from proxy.upstream.providers import PROVIDERS


def credential(token_id: str = "t1", project_id: str = "p1") -> Credential:
    limits = TokenLimits(token_id, None, None, None, datetime.now(UTC))
    return Credential(
        token_id, project_id, "http://x", "k", None, None, True, True, limits, PROVIDERS["openai"]
    )


@pytest.mark.parametrize(
    ("age", "fresh", "in_outage"),
    [
        (0.0, True, True),
        (10.0, True, True),
        (10.5, False, True),
        (60.0, False, True),
        (60.5, False, False),
    ],
)
def test_an_entry_is_fresh_for_the_ttl_and_usable_in_an_outage_for_the_outage_ttl(
    age: float, fresh: bool, in_outage: bool
) -> None:
    cache = TokenCache(10, ttl=10.0, outage_ttl=60.0)
    cred = credential()
    cache.put("k", cred, now=100.0)
    assert (cache.usable_in_outage("k", 100.0 + age) is cred) == in_outage
    assert cache.get("k", 100.0 + age) == ((True, cred) if fresh else (False, None))
    assert (cache.usable_in_outage("k", 100.0 + age) is cred) == in_outage  # get kept it


def test_unknown_tokens_are_never_used_in_an_outage() -> None:
    cache = TokenCache(10, ttl=10.0, outage_ttl=60.0)
    cache.put("garbage", None, now=0.0)
    assert cache.get("garbage", 5.0) == (True, None)  # refused from cache while fresh
    assert cache.usable_in_outage("garbage", 5.0) is None
    assert not cache.can_serve_in_outage(5.0)


def test_can_serve_in_outage_follows_the_newest_confirmation() -> None:
    cache = TokenCache(10, ttl=10.0, outage_ttl=60.0)
    assert not cache.can_serve_in_outage(0.0)
    cache.put("a", credential("a"), now=0.0)
    cache.put("b", credential("b"), now=30.0)
    assert cache.can_serve_in_outage(90.0)
    assert not cache.can_serve_in_outage(90.5)


def test_an_outage_ttl_below_the_ttl_means_the_ttl() -> None:
    cache = TokenCache(10, ttl=10.0, outage_ttl=0.0)
    cred = credential()
    cache.put("k", cred, now=0.0)
    assert cache.usable_in_outage("k", 10.0) is cred
    assert cache.usable_in_outage("k", 10.5) is None


def test_a_change_drops_the_entry_for_outages_too() -> None:
    cache = TokenCache(10, ttl=10.0, outage_ttl=60.0)
    cache.put("k", credential("t1"), now=0.0)
    assert cache.drop("token", "t1") == 1
    assert cache.usable_in_outage("k", 1.0) is None
