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
    vary = Upstream(
        headers={"content-type": "application/json", "vary": "Origin", "cache-control": "public"}
    )
    await request(cache, Upstream(), headers={"x-proxy-cache-ttl": "90"})
    await request(cache, vary, path="/v1/files", headers={"origin": "a"})
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    assert len(keys) == 4  # an entry, a Vary marker, its variant, the project's index
    for key in keys:
        ttl = await client.pttl(key)
        assert 0 < ttl <= 300_000, (key, ttl)


async def test_a_lookup_is_one_get(
    private_redis: RedisProcess, clients: list[aioredis.Redis]
) -> None:
    """Even through Vary, once the worker has met the marker; the first time, two."""
    settings = Settings.from_env({"REDIS_ADDR": private_redis.addr, "HTTP_CACHE_BACKEND": "redis"})
    client = connect(clients, settings)
    writer, reader = build_cache(settings, client), build_cache(settings, client)
    assert writer is not None and reader is not None
    await request(writer, Upstream())
    vary = Upstream(
        headers={"content-type": "application/json", "vary": "Origin", "cache-control": "public"}
    )
    await request(writer, vary, path="/v1/files", headers={"origin": "a"})

    async def commands_for_a_hit(cache: HttpCache, path: str) -> dict[str, int]:
        await client.config_resetstat()
        plan = cache.prepare("p1", "GET", path, b"", [(b"origin", b"a")], b"")
        assert await cache.lookup(plan) is not None
        stats = await client.info("commandstats")
        return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_config|resetstat"}

    assert await commands_for_a_hit(reader, "/v1/models") == {"cmdstat_get": 1}
    assert await commands_for_a_hit(writer, "/v1/files") == {"cmdstat_get": 1}
    assert await commands_for_a_hit(reader, "/v1/files") == {"cmdstat_get": 2}  # first sight
    assert await commands_for_a_hit(reader, "/v1/files") == {"cmdstat_get": 1}


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


async def test_a_worker_that_remembers_an_old_vary_recovers(
    shared_redis: tuple[dict[str, str], str], clients: list[aioredis.Redis]
) -> None:
    env, _ = shared_redis
    settings = Settings.from_env(env)
    one = build_cache(settings, connect(clients, settings))
    two = build_cache(settings, connect(clients, settings))
    assert one is not None and two is not None
    upstream = Upstream(
        headers={"content-type": "application/json", "vary": "Origin", "cache-control": "public"}
    )
    await request(one, upstream, headers={"origin": "a"})
    assert (await request(two, upstream, headers={"origin": "a"})).cache == "hit"
    # The upstream stops varying; instance one refreshes the entry.
    upstream.headers = {"content-type": "application/json"}
    await request(one, upstream, headers={"origin": "a", "cache-control": "no-cache"})
    assert (await request(one, upstream, headers={"origin": "b"})).cache == "hit"
    # Instance two still remembers the Vary: one miss, then it sees the plain entry.
    assert (await request(two, upstream, headers={"origin": "b"})).cache == "miss"
    assert (await request(two, upstream, headers={"origin": "c"})).cache == "hit"
