"""Redis key names of the event pipeline (all in the stream's Redis Cluster hash slot), and what
the stream holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

#: The one field of a stream entry: the event as JSON (``RequestEvent.to_bytes``).
EVENT_FIELD = b"e"


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the first non-empty ``{...}``, else the key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True, slots=True)
class StreamKeys:
    """The stream keeps the operator's name unchanged (``llm-proxy-events``); helper keys wrap it
    in a hash tag (``{llm-proxy-events}:jobs``), and a key hashes exactly as its tag does, so
    every key lives in one slot and multi-key scripts work on Redis Cluster."""

    stream: str

    def helper(self, name: str) -> str:
        if hash_tag(self.stream) != self.stream:
            return f"{self.stream}:{name}"  # already tagged: any suffix keeps the slot
        return f"{{{self.stream}}}:{name}"

    @property
    def jobs_namespace(self) -> str:
        """Prefix of the dramatiq broker's keys (export and maintenance jobs)."""
        return self.helper("jobs")

    @property
    def retention_lock(self) -> str:
        return self.helper("retention-lock")


@dataclass(frozen=True, slots=True)
class GroupStats:
    name: str
    consumers: int
    pending: int
    lag: int | None  # None when Redis cannot compute it (entries deleted mid-stream)
    last_delivered_id: str


@dataclass(frozen=True, slots=True)
class StreamStats:
    length: int
    groups: list[GroupStats]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def stream_stats(redis: aioredis.Redis, stream_key: str) -> StreamStats:
    """The stream's length and, per consumer group, its consumers, pending entries and lag."""
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(stream_key)
    pipe.xinfo_groups(stream_key)
    try:
        length, groups = await pipe.execute()
    except aioredis.ResponseError:  # no stream yet
        return StreamStats(0, [])
    out = []
    for g in groups:
        info = {_text(k): v for k, v in g.items()}
        lag = info.get("lag")
        out.append(
            GroupStats(
                name=_text(info["name"]),
                consumers=int(info["consumers"]),
                pending=int(info["pending"]),
                lag=None if lag is None else int(lag),
                last_delivered_id=_text(info["last-delivered-id"]),
            )
        )
    return StreamStats(int(length), out)
