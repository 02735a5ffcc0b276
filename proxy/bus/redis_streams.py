"""The production bus: events XADDed to a Redis stream in pipelined batches, spilling to a local
spool while Redis is down or slow (see ``SpoolingBus``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from proxy.bus.spool import Spool
from proxy.bus.spooling import SpoolingBus
from shared.events import RequestEvent
from shared.redis import close_redis
from shared.streams import EVENT_FIELD, shard_keys, shard_of


def _event_id(line: bytes) -> str:
    """The event id of a spooled line; an unreadable line goes to shard 0 (the dispatcher
    dead-letters it there)."""
    try:
        return RequestEvent.from_bytes(line).event_id
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """REDIS_WAIT_REPLICAS and REDIS_WAIT_TIMEOUT: how many replicas must hold a batch, and
    how long WAIT may block for them."""

    replicas: int
    timeout: float = 0.2

    @property
    def timeout_ms(self) -> int:
        return max(1, round(self.timeout * 1000))  # WAIT 0 would block forever


class ReplicasBehind(RedisError):
    """WAIT answered that fewer replicas than REDIS_WAIT_REPLICAS hold the batch."""


class StreamSink:
    """XADD each line to its stream, all in one pipeline (no MAXLEN: trimming is the
    dispatcher's job, below what every group acknowledged). With several shards
    (REDIS_STREAM_SHARDS) an event's stream is picked by its event id, so its accepted and
    final records, and any retry of either, land on the same stream in order.

    With ``wait`` (REDIS_WAIT_REPLICAS) the pipeline ends with ``WAIT n timeout`` on
    each master it wrote to, on the connection that carried the XADDs (WAIT covers that
    connection's earlier writes), so the batch still costs one round trip per master. A batch
    that fewer than n replicas acknowledged raises ``ReplicasBehind``: the bus spools it and
    sends it again, and a copy that did survive is a duplicate the dispatcher skips by id."""

    name = "the Redis stream"

    def __init__(
        self,
        redis: aioredis.Redis,
        stream_key: str,
        *,
        owns_redis: bool,
        shards: int = 1,
        wait: ReplicaWait | None = None,
    ) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.streams = shard_keys(stream_key, shards)
        self.owns_redis = owns_redis
        self.wait = wait if wait is not None and wait.replicas > 0 else None

    async def send(self, events: list[RequestEvent], lines: list[bytes]) -> int:
        if len(self.streams) == 1:
            return await self.replay(lines)
        await self._xadd(
            [self.streams[shard_of(e.event_id, len(self.streams))] for e in events], lines
        )
        return 0

    async def replay(self, lines: list[bytes]) -> int:
        if len(self.streams) == 1:
            await self._xadd([self.stream_key] * len(lines), lines)
            return 0
        n = len(self.streams)
        await self._xadd([self.streams[shard_of(_event_id(line), n)] for line in lines], lines)
        return 0

    async def _xadd(self, streams: list[str], lines: list[bytes]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for stream, line in zip(streams, lines, strict=True):
            pipe.xadd(stream, {EVENT_FIELD: line})
        wait = self.wait
        if wait is None:
            await pipe.execute()
            return
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()  # the slot map (a no-op once it is known)
        placed = self._placement(streams)
        for node in {id(n): n for n in placed.values()}.values():
            target: dict[str, Any] = {} if node is None else {"target_nodes": node}
            pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms, **target)
        acks = (await pipe.execute())[len(lines) :]
        if any(int(n) < wait.replicas for n in acks):
            raise ReplicasBehind(
                f"WAIT: {min(int(n) for n in acks)} of {wait.replicas} replicas "
                f"acknowledged the batch within {wait.timeout_ms} ms"
            )
        now = self._placement(streams)
        if any(now[stream] is not node for stream, node in placed.items()):
            # A slot moved mid-batch, or the client re-read the slot map and sent the pipeline
            # again (a Cluster failover): some XADDs went out on a connection no WAIT covered.
            raise ReplicasBehind("the stream's master changed during the batch; sending again")

    def _placement(self, streams: list[str]) -> dict[str, Any]:
        """The master node of each stream written (None off Cluster: one connection)."""
        if not isinstance(self.redis, RedisCluster):
            return {"": None}
        return {stream: self.redis.get_node_from_key(stream) for stream in set(streams)}

    async def close(self) -> None:
        if self.owns_redis:
            await close_redis(self.redis)


class RedisStreamsBus(SpoolingBus):
    """The spooling bus in front of a Redis stream."""

    def __init__(
        self,
        redis: aioredis.Redis,
        stream_key: str,
        spool: Spool,
        *,
        capacity: int = 1000,
        batch_size: int = 500,
        linger: float = 0.005,
        send_timeout: float = 2.0,
        close_timeout: float = 5.0,
        adopt_interval: float = 30.0,
        owns_redis: bool = False,
        strict: bool = False,
        shards: int = 1,
        wait: ReplicaWait | None = None,
    ) -> None:
        super().__init__(
            StreamSink(redis, stream_key, owns_redis=owns_redis, shards=shards, wait=wait),
            spool,
            capacity=capacity,
            batch_size=batch_size,
            linger=linger,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            adopt_interval=adopt_interval,
            strict=strict,
        )
        self.redis = redis
        self.stream_key = stream_key
