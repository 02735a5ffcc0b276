"""The limiter's key placement on Redis Cluster: each token in its own slot, so load spreads
over the shards; the two-part check merged as one script would have answered."""

from __future__ import annotations

import pytest

from proxy.limits.keys import KeyLayout
from proxy.limits.spread import merge, slot_groups, split_admit
from proxy.redis_cluster import key_slot
from tests.redis_topologies import Cluster

ARGS = [0, "m1", 100, 60000, 10, 60000, 5, 1000, 2, 30000]


def test_one_server_keeps_todays_single_tag_names() -> None:
    layout = KeyLayout("p:", b"s")
    t, _, c = layout.token_keys("tok")
    assert {key_slot(k) for k in (t, c, layout.global_key, layout.ip_key("10.0.0.1"))} == {
        key_slot("{llm-proxy-limits}")
    }
    assert t.startswith("p:{llm-proxy-limits}:t:")


def test_tokens_spread_over_slots_each_token_in_one() -> None:
    layout = KeyLayout("p:", b"s", spread=True)
    slots = set()
    for i in range(200):
        t, _, c = layout.token_keys(f"token-{i}")
        assert key_slot(t) == key_slot(c)  # one token's keys: one script call
        slots.add(key_slot(t))
    assert len(slots) > 190
    assert key_slot(layout.ip_key("10.0.0.1")) == key_slot(layout.global_key)


@pytest.mark.cluster
def test_token_keys_reach_every_master(redis_cluster: Cluster) -> None:
    layout = KeyLayout("p:", b"s", spread=True)
    masters = {redis_cluster.master_of(layout.token_keys(f"t{i}")[0]).port for i in range(60)}
    assert len(masters) == redis_cluster.masters


def test_split_sends_each_part_only_its_own_keys() -> None:
    keys = ("g", "ip", "t", "c")
    (edge_keys, edge), (own_keys, own) = split_admit(keys, ARGS)
    assert edge_keys == ("g", "ip", "g", "g") and edge[6] == edge[8] == 0
    assert edge[2:6] == ARGS[2:6]
    assert own_keys == ("t", "t", "t", "c") and own[2] == own[4] == 0
    assert own[6:] == ARGS[6:]
    layout = KeyLayout("p:", b"s", spread=True)
    t, _, c = layout.token_keys("tok")
    real = (layout.global_key, layout.ip_key("10.0.0.1"), t, c)
    assert len(slot_groups(real)) == 2  # as one script, this call would be CROSSSLOT
    for part_keys, _ in split_admit(real, ARGS):
        assert len({key_slot(k) for k in part_keys}) == 1


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        ([0, "m", 0, 60000, 0, 60000, 5, 1000, 0, 30000], 1),  # token window only
        ([0, "m", 9, 60000, 0, 60000, 0, 1000, 0, 30000], 1),  # global only
        ([0, "m", 0, 60000, 0, 60000, 0, 1000, 3, 30000], 1),  # leases only
    ],
)
def test_a_part_with_nothing_to_check_is_not_sent(args: list[object], parts: int) -> None:
    assert len(split_admit(("g", "ip", "t", "c"), args)) == parts


@pytest.mark.parametrize(
    ("replies", "expected", "undo"),
    [
        # both admitted: the tightest window (fewest left) describes the answer
        ([[1, 1, 100, 40, 500], [1, 3, 5, 2, 900]], [1, 3, 5, 2, 900], []),
        ([[1, 0, 0, 0, 0], [1, 3, 5, 2, 900]], [1, 3, 5, 2, 900], []),
        ([[1, 0, 0, 0, 0]], [1, 0, 0, 0, 0], []),
        # one refused: that refusal, and the part that counted is taken back
        ([[0, 2, 10, 0, 3000], [1, 3, 5, 2, 900]], [0, 2, 10, 0, 3000], [1]),
        ([[1, 1, 100, 40, 500], [0, 5, 2, 0, 1000]], [0, 5, 2, 0, 1000], [0]),
        # both refused: the longer wait, nothing to undo
        ([[0, 1, 100, 0, 200], [0, 3, 5, 0, 700]], [0, 3, 5, 0, 700], []),
    ],
)
def test_merge_answers_as_one_script_would(
    replies: list[list[int]], expected: list[int], undo: list[int]
) -> None:
    assert merge(replies) == (expected, undo)
