"""Stream shard names and the placement of events: stable per event, spread over the shards,
each shard in its own Cluster slot, one shard being today's single stream."""

from __future__ import annotations

import uuid
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from proxy.redis_cluster import key_slot
from shared.streams import StreamKeys, shard_keys, shard_of


def test_one_shard_is_todays_stream() -> None:
    assert shard_keys("llm-proxy-events", 1) == ("llm-proxy-events",)
    assert shard_of("anything", 1) == 0


def test_shards_have_their_own_slots_and_shard_0_keeps_the_name() -> None:
    keys = shard_keys("llm-proxy-events", 8)
    assert keys[0] == "llm-proxy-events" and keys[1] == "{llm-proxy-events:1}"
    assert len({key_slot(k) for k in keys}) == 8
    # the job broker and retention lock stay with shard 0
    assert key_slot(StreamKeys(keys[0]).jobs_namespace) == key_slot(keys[0])


def test_a_tagged_stream_key_moves_its_tag_per_shard() -> None:
    keys = shard_keys("{ev}stream", 3)
    assert keys == ("{ev}stream", "{ev:1}stream", "{ev:2}stream")
    assert len({key_slot(k) for k in keys}) == 3


@given(st.text(min_size=1), st.integers(min_value=1, max_value=64))
def test_an_event_always_lands_on_the_same_shard(event_id: str, shards: int) -> None:
    assert 0 <= shard_of(event_id, shards) < shards
    assert shard_of(event_id, shards) == shard_of(event_id, shards)


def test_events_spread_evenly() -> None:
    counts = Counter(shard_of(str(uuid.uuid4()), 4) for _ in range(8000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 1700  # 2000 each on average
