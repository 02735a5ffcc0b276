"""The production bus: events XADDed to a Redis stream in pipelined batches, spilling to a local
spool while Redis is down or slow (see ``SpoolingBus``)."""

from __future__ import annotations

import redis.asyncio as aioredis

from proxy.bus.spool import Spool
from proxy.bus.spooling import SpoolingBus
from shared.events import RequestEvent
from shared.streams import EVENT_FIELD


class StreamSink:
    """XADD each line to the stream, all in one pipeline (no MAXLEN: trimming is the
    dispatcher's job, below what every group acknowledged)."""

    name = "the Redis stream"

    def __init__(self, redis: aioredis.Redis, stream_key: str, *, owns_redis: bool) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.owns_redis = owns_redis

    async def send(self, events: list[RequestEvent], lines: list[bytes]) -> int:
        return await self.replay(lines)

    async def replay(self, lines: list[bytes]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(self.stream_key, {EVENT_FIELD: line})
        await pipe.execute()
        return 0

    async def close(self) -> None:
        if self.owns_redis:
            await self.redis.aclose()


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
    ) -> None:
        super().__init__(
            StreamSink(redis, stream_key, owns_redis=owns_redis),
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
