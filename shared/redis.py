"""Building redis-py clients from the one ``RedisSettings``: address, user, database, TLS."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared.config import RedisSettings, Settings


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
