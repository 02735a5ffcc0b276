"""What only the Redis backend promises: sharing across instances, one round trip, expiring keys,
and a bypass (never an error) while Redis is away."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.cache import CacheUnavailable, HttpCache, RedisBackend, build_cache
from shared.config import Settings
from shared.redis import make_redis
from tests.cache_client import Upstream, request
from tests.services import RedisProcess


@pytest.fixture
async def clients() -> AsyncIterator[list[aioredis.Redis]]:
    """Redis clients a test makes, closed however the test ends."""
    made: list[aioredis.Redis] = []
    yield made
    for client in made:
        await client.aclose()


def connect(made: list[aioredis.Redis], settings: Settings) -> aioredis.Redis:
    client = make_redis(settings)
    made.append(client)
    return client


@pytest.fixture
async def shared_redis(
    redis_env: dict[str, str], unique_prefix: str
) -> AsyncIterator[tuple[dict[str, str], str]]:
    prefix = f"test:cache:{unique_prefix}"
    env = {**redis_env, "HTTP_CACHE_BACKEND": "redis", "REDIS_CACHE_KEY_PREFIX": prefix}
    yield env, prefix
    client = make_redis(Settings.from_env(env))
    await RedisBackend(client, prefix=prefix).purge()
    await client.aclose()


async def test_two_instances_hit_each_others_entries(
    shared_redis: tuple[dict[str, str], str], clients: list[aioredis.Redis]
) -> None:
    env, _ = shared_redis
    settings = Settings.from_env(env)
    one = build_cache(settings, connect(clients, settings))
    two = build_cache(settings, connect(clients, settings))
    assert one is not None and two is not None
    upstream = Upstream()
    body = b'{"model":"text-embedding-3-small","input":"x"}'
    opt_in = {"cache-control": "public, max-age=120", "vary-me": "1"}
    await request(one, upstream)
    await request(one, upstream, method="POST", path="/v1/embeddings", headers=opt_in, body=body)
    assert (await request(two, upstream)).cache == "hit"
    post = await request(
        two, upstream, method="POST", path="/v1/embeddings", headers=opt_in, body=body
    )
    assert post.cache == "hit" and upstream.calls == 2
    assert await two.purge("p1") == 2
    assert (await request(one, upstream)).cache == "miss"


async def test_every_redis_key_expires(
    shared_redis: tuple[dict[str, str], str], clients: list[aioredis.Redis]
) -> None:
    """So a `volatile-*` maxmemory policy can evict any of them and nothing outlives its TTL."""
    env, prefix = shared_redis
    settings = Settings.from_env(env)
    client = connect(clients, settings)
    cache = build_cache(settings, client)
    assert cache is not None
    vary = Upstream(headers={"content-type": "application/json", "vary": "Origin"})
    await request(cache, Upstream(), headers={"x-proxy-cache-ttl": "90"})
    await request(cache, vary, path="/v1/files", headers={"origin": "a"})
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    assert len(keys) == 4  # an entry, a Vary marker, its variant, the project's index
    for key in keys:
        ttl = await client.pttl(key)
        assert 0 < ttl <= 300_000, (key, ttl)


async def test_a_lookup_is_one_round_trip_even_through_vary(
    private_redis: RedisProcess, clients: list[aioredis.Redis]
) -> None:
    settings = Settings.from_env({"REDIS_ADDR": private_redis.addr, "HTTP_CACHE_BACKEND": "redis"})
    client = connect(clients, settings)
    cache = build_cache(settings, client)
    assert cache is not None
    upstream = Upstream(headers={"content-type": "application/json", "vary": "Origin"})
    await request(cache, upstream, headers={"origin": "a"})
    await client.config_resetstat()
    plan = cache.prepare("p1", "GET", "/v1/models", b"", [(b"origin", b"a")], b"")
    served = await cache.lookup(plan)
    assert served is not None
    stats = await client.info("commandstats")
    # GETs inside the script are counted too; CONFIG RESETSTAT was the test's own command.
    top_level = {
        k: v["calls"]
        for k, v in stats.items()
        if k not in ("cmdstat_get", "cmdstat_config|resetstat")
    }
    assert top_level == {"cmdstat_evalsha": 1}, top_level


def _cache_on(server: RedisProcess, clock: list[float], made: list[aioredis.Redis]) -> HttpCache:
    settings = Settings.from_env(
        {"REDIS_ADDR": server.addr, "HTTP_CACHE_BACKEND": "redis", "REDIS_TIMEOUT": "200ms"}
    )
    cache = build_cache(settings, connect(made, settings), clock=lambda: clock[0])
    assert cache is not None
    return cache


async def test_redis_down_is_a_bypass_not_an_error(
    private_redis: RedisProcess, clients: list[aioredis.Redis]
) -> None:
    clock = [time.time()]
    cache = _cache_on(private_redis, clock, clients)
    upstream = Upstream()
    await request(cache, upstream)
    assert (await request(cache, upstream)).cache == "hit"

    private_redis.stop()
    down = await request(cache, upstream)
    assert down.status == 200 and down.body == b'{"object":"list","data":[]}'
    assert down.cache == "bypass"
    assert down.cache_status == "llm-proxy; fwd=bypass; detail=unavailable"
    assert cache.stats.unavailable == 1 and cache.stats.bypasses == 1
    # Within the retry interval Redis is not even tried; still a bypass, still counted.
    assert (await request(cache, upstream)).cache == "bypass"
    assert cache.stats.unavailable == 2 and upstream.calls == 3
    assert cache.stats.stores == 1  # nothing was written while Redis was away

    private_redis.start()
    clock[0] += 1.5  # past the retry interval
    assert (await request(cache, upstream)).cache == "miss"  # a fresh server: nothing stored
    assert (await request(cache, upstream)).cache == "hit"


async def test_store_failure_is_counted_not_raised(
    private_redis: RedisProcess, clients: list[aioredis.Redis]
) -> None:
    clock = [time.time()]
    cache = _cache_on(private_redis, clock, clients)
    plan = cache.prepare("p1", "GET", "/v1/models", b"", [], b"")
    assert await cache.lookup(plan) is None
    async with cache.fill(plan) as fill:
        fill.start(200, [(b"content-type", b"application/json")])
        fill.feed(b"{}")
        private_redis.stop()
        await fill.finish()
    assert cache.stats.unavailable == 1 and cache.stats.stores == 0
    with pytest.raises(CacheUnavailable):
        await cache.purge("p1")
