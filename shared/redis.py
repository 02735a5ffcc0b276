"""Building redis-py clients from the one ``RedisSettings``: address, user, database, TLS."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from shared.config import RedisSettings, Settings

log = logging.getLogger("llm_proxy.redis")


def connection_kwargs(redis: RedisSettings) -> dict[str, Any]:
    """What redis-py's ``Redis(...)`` (asyncio or not) needs to reach ``redis``: each part
    given explicitly, so no client parses the address a second time."""
    kwargs: dict[str, Any] = {
        "host": redis.host,
        "port": redis.port,
        "db": redis.db,
        "username": redis.username or None,
        "password": redis.password.get() or None,
    }
    if redis.tls:
        kwargs.update(
            ssl=True,
            ssl_ca_certs=redis.ca_file or None,  # None: the system store
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
        )
    return kwargs


def make_redis(
    settings: Settings, *, timeout: float | None = None, **kwargs: Any
) -> aioredis.Redis:
    """An asyncio Redis client (a connection pool, opened lazily). ``timeout`` overrides
    REDIS_TIMEOUT for callers that block on purpose (XREADGROUP BLOCK)."""
    seconds = settings.redis_timeout if timeout is None else timeout
    return aioredis.Redis(
        **connection_kwargs(settings.redis),
        socket_timeout=seconds,
        socket_connect_timeout=seconds,
        health_check_interval=30,
        **kwargs,
    )


def uses_redis(settings: Settings) -> bool:
    """Whether any enabled feature keeps state in Redis (then token revocations are also
    pushed to every worker over Redis pub/sub)."""
    return (
        settings.event_bus == "redis-streams"
        or settings.distributed_rate_limit_enabled
        or (settings.http_cache_enabled and settings.http_cache_backend == "redis")
    )


async def reachable(redis: aioredis.Redis, seconds: float) -> bool:
    """Whether Redis answers PING within ``seconds``. A failed PING is tried once more on a new
    connection: after a blip the pooled connections may be dead (silently, if the network
    dropped them) while Redis itself is fine, and a readiness probe must report Redis, not a
    stale socket. This does not lean on redis-py's retry defaults, which vary by version."""
    for attempt in range(2):
        try:
            if attempt:
                # idle connections shared the dead one's fate; in-use ones reconnect themselves
                await redis.connection_pool.disconnect(inuse_connections=False)
            await asyncio.wait_for(redis.ping(), seconds)
            return True
        except Exception as exc:  # any failure: look again on a fresh connection, then say down
            log.debug("Redis PING failed (attempt %d): %r", attempt + 1, exc)
    return False
