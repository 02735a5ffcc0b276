"""The production bus: events XADDed to a Redis stream in pipelined batches, spilling to a local
spool while Redis is down or slow (see ``SpoolingBus``)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from proxy.bus.journal import Journal
from proxy.bus.spool import Spool
from proxy.bus.spooling import SpoolingBus
from proxy.redis_client import Arg, FastRedis
from shared.events import RequestEvent
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

    It speaks through the lean client (``FastRedis.pipeline``: one write, one timer per
    batch), which costs a fraction of redis-py's pipeline per event; Cluster and Sentinel
    deployments get its subclasses, which route and fail over.

    With ``wait`` (REDIS_WAIT_REPLICAS) each master's share of the pipeline ends with
    ``WAIT n timeout`` on the connection that carried its XADDs (``FastRedis.replicated``), so
    the batch still costs one round trip per master. A batch that fewer than n replicas
    acknowledged raises ``ReplicasBehind``: the bus spools it and sends it again, and a copy
    that did survive is a duplicate the dispatcher skips by event id."""

    name = "the Redis stream"

    def __init__(
        self,
        redis: FastRedis,
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
        pairs = zip(streams, lines, strict=True)
        commands: list[tuple[Arg, ...]] = [
            ("XADD", stream, "*", EVENT_FIELD, line) for stream, line in pairs
        ]
        wait = self.wait
        if wait is None:
            await self.redis.pipeline(commands)
            return
        acks = await self.redis.replicated(commands, wait.replicas, wait.timeout_ms)
        if min(acks) < wait.replicas:
            raise ReplicasBehind(
                f"WAIT: {min(acks)} of {wait.replicas} replicas acknowledged the batch "
                f"within {wait.timeout_ms} ms"
            )

    async def close(self) -> None:
        if self.owns_redis:
            await self.redis.aclose()


class RedisStreamsBus(SpoolingBus):
    """The spooling bus in front of a Redis stream."""

    def __init__(
        self,
        redis: FastRedis,
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
        journal: Journal | None = None,
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
            journal=journal,
        )
        self.redis = redis
        self.stream_key = stream_key
