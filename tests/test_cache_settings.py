"""The cache's settings: defaults, bad values, and what they build."""

from __future__ import annotations

import pytest

from proxy.cache import HttpCache, MemoryBackend, build_backend, build_cache
from shared.config import Settings
from shared.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.http_cache_enabled is True
    assert s.http_cache_backend == "in-memory"
    assert s.http_cache_default_ttl == 300.0
    assert s.http_cache_max_object_bytes == 1048576
    assert s.redis_cache_key_prefix == "llmproxy:cache:"
    assert s.cache_max_size == 10000
    assert s.http_cache_max_bytes == 64 * 1024 * 1024
    assert s.http_cache_single_flight_wait == 10.0
    cache = build_cache(s)
    assert isinstance(cache, HttpCache) and isinstance(cache.backend, MemoryBackend)
    assert cache.backend.max_entries == 10000 and cache.default_ttl == 300.0


def test_values_parse() -> None:
    s = Settings.from_env(
        {
            "HTTP_CACHE_ENABLED": "false",
            "HTTP_CACHE_BACKEND": "REDIS",
            "HTTP_CACHE_DEFAULT_TTL": "1h",
            "HTTP_CACHE_SINGLE_FLIGHT_WAIT": "0",
            "REDIS_CACHE_KEY_PREFIX": "team-a:cache:",
        }
    )
    assert not s.http_cache_enabled and s.http_cache_backend == "redis"
    assert s.http_cache_default_ttl == 3600.0 and s.http_cache_single_flight_wait == 0.0
    assert s.redis_cache_key_prefix == "team-a:cache:"
    assert build_cache(s) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HTTP_CACHE_BACKEND": "memcached"}, "HTTP_CACHE_BACKEND must be one of in-memory, redis"),
        ({"HTTP_CACHE_ENABLED": "maybe"}, "HTTP_CACHE_ENABLED must be true or false"),
        ({"HTTP_CACHE_DEFAULT_TTL": "soon"}, "HTTP_CACHE_DEFAULT_TTL must be a duration"),
        (
            {"HTTP_CACHE_MAX_OBJECT_BYTES": "0"},
            "HTTP_CACHE_MAX_OBJECT_BYTES must be an integer >= 1",
        ),
        ({"CACHE_MAX_SIZE": "lots"}, "CACHE_MAX_SIZE must be an integer >= 1"),
        ({"REDIS_CACHE_KEY_PREFIX": "a{b}:"}, "REDIS_CACHE_KEY_PREFIX must be a non-empty key"),
        ({"REDIS_CACHE_KEY_PREFIX": ""}, "REDIS_CACHE_KEY_PREFIX must be a non-empty key"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_redis_backend_needs_a_client() -> None:
    with pytest.raises(ValueError, match="needs a Redis client"):
        build_backend(Settings.from_env({"HTTP_CACHE_BACKEND": "redis"}))
