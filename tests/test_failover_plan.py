"""The failover plan as a pure function: priorities in order, traffic shared by weight, an
affinity key always mapped to the same upstream, Retry-After read safely."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.failover import Target, plan, retry_after_seconds
from proxy.upstream.providers import PROVIDERS

OPENAI = PROVIDERS["openai"]


def target(name: str, weight: int = 1, priority: int = 0) -> Target:
    return Target(name, OPENAI, f"http://{name}.test/v1", "key", weight, priority)


def test_lower_priorities_come_first_and_every_target_once() -> None:
    targets = (target("c", priority=2), target("a"), target("b", priority=1), target("a2"))
    order = plan(targets, None, random.Random(1))
    assert [t.priority for t in order] == [0, 0, 1, 2]
    assert sorted(t.id for t in order) == ["a", "a2", "b", "c"]


def test_weights_share_the_first_place() -> None:
    targets = (target("heavy", weight=3), target("light", weight=1), target("backup", priority=1))
    rng = random.Random(7)
    firsts = Counter(plan(targets, None, rng)[0].id for _ in range(8000))
    assert firsts["backup"] == 0
    assert 0.70 < firsts["heavy"] / 8000 < 0.80  # 3 : 1, with room for chance


def test_a_zero_weight_target_is_only_a_last_resort_in_its_priority() -> None:
    targets = (target("off", weight=0), target("on"))
    assert all(plan(targets, None, random.Random(i))[0].id == "on" for i in range(200))


@given(st.text(min_size=1, max_size=40))
def test_an_affinity_key_always_gets_the_same_order(key: str) -> None:
    targets = tuple(target(f"u{i}", weight=1 + i % 3) for i in range(5))
    first = [t.id for t in plan(targets, key, random.Random(1))]
    again = [t.id for t in plan(tuple(reversed(targets)), key, random.Random(2))]
    assert first == again


def test_affinity_keys_spread_over_the_targets() -> None:
    targets = (target("a"), target("b"))
    firsts = Counter(plan(targets, f"conv-{i}", random.Random(0))[0].id for i in range(2000))
    assert firsts["a"] > 800 and firsts["b"] > 800


@given(st.binary(max_size=30))
def test_retry_after_is_a_bounded_number_or_none(raw: bytes) -> None:
    value = retry_after_seconds(raw)
    assert value is None or 0 <= value <= 3600


def test_retry_after_forms() -> None:
    assert retry_after_seconds(b"120") == 120
    assert retry_after_seconds(b"1.5") == 1.5
    assert retry_after_seconds(b"99999999") == 3600
    assert retry_after_seconds(b"Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds(b"-3") is None
    assert retry_after_seconds(None) is None
