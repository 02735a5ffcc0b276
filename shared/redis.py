"""Building Redis clients from the settings: address, database, password and timeouts."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared.config import Settings


def redis_url(settings: Settings) -> str:
    """REDIS_ADDR as a URL: ``host:port`` becomes ``redis://host:port``; URLs pass unchanged."""
    addr = settings.redis_addr.strip()
    if "://" in addr:
        return addr
    return f"redis://{addr}"


def make_redis(
    settings: Settings, *, timeout: float | None = None, **kwargs: Any
) -> aioredis.Redis:
    """An asyncio Redis client (a connection pool, opened lazily). ``timeout`` overrides
    REDIS_TIMEOUT for callers that block on purpose (XREADGROUP BLOCK)."""
    seconds = settings.redis_timeout if timeout is None else timeout
    return aioredis.Redis.from_url(
        redis_url(settings),
        db=settings.redis_db,
        password=settings.redis_password.get() or None,
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
