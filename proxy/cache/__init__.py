"""The HTTP response cache: policy, the in-memory and Redis backends, and the HttpCache facade."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from proxy.cache.backend import CacheBackend, CacheStats, CacheUnavailable, Usage
from proxy.cache.entry import CacheEntry
from proxy.cache.http_cache import CachePlan, Fill, HttpCache, Served
from proxy.cache.memory import MemoryBackend
from proxy.cache.redis import RedisBackend
from proxy.redis_client import FastRedis
from shared.config import Settings

__all__ = [
    "CacheBackend",
    "CacheEntry",
    "CachePlan",
    "CacheStats",
    "CacheUnavailable",
    "Fill",
    "HttpCache",
    "MemoryBackend",
    "RedisBackend",
    "Served",
    "Usage",
    "build_backend",
    "build_cache",
]


def build_backend(
    settings: Settings,
    redis: aioredis.Redis | None = None,
    *,
    clock: Callable[[], float] = time.time,
    fast: FastRedis | None = None,
) -> CacheBackend:
    """The backend HTTP_CACHE_BACKEND names; ``redis`` is the app's client (lifespan-owned),
    ``fast`` the lean client for lookups."""
    if settings.http_cache_backend == "redis":
        if redis is None:
            raise ValueError("HTTP_CACHE_BACKEND=redis needs a Redis client")
        return RedisBackend(redis, prefix=settings.redis_cache_key_prefix, clock=clock, fast=fast)
    return MemoryBackend(
        max_entries=settings.cache_max_size, max_bytes=settings.http_cache_max_bytes, clock=clock
    )


def build_cache(
    settings: Settings,
    redis: aioredis.Redis | None = None,
    *,
    clock: Callable[[], float] = time.time,
    fast: FastRedis | None = None,
) -> HttpCache | None:
    """The cache the settings describe, or None when HTTP_CACHE_ENABLED is false."""
    if not settings.http_cache_enabled:
        return None
    return HttpCache(
        build_backend(settings, redis, clock=clock, fast=fast),
        default_ttl=settings.http_cache_default_ttl,
        max_object_bytes=settings.http_cache_max_object_bytes,
        single_flight_wait=settings.http_cache_single_flight_wait,
        clock=clock,
    )
