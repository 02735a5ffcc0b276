"""The Redis limiter: the quota in the database, key hashing, NOSCRIPT, outages, leases."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.limits import LimitConfig, LimitStats, RedisLimiter, make_limiter, make_limiter_redis
from proxy.limits.keys import HASH_TAG, KeyLayout
from proxy.redis_client import FastRedis
from shared.config import Settings
from shared.errors import QuotaExceeded, RateLimited, Unavailable
from shared.redis import make_redis
from shared.store import SqlStore, make_store
from tests.limits_support import (
    SECRET,
    FakeClock,
    TcpProxy,
    hold_lease_and_die,
    make_token,
    set_usage,
)
from tests.services import RedisProcess


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "limits.db")


@pytest.fixture
async def sqlite_store(db_path: str) -> AsyncIterator[SqlStore]:
    store = make_store(Settings.from_env({"DATABASE_URL": db_path}))
    await store.open()
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
async def redis(redis_env: dict[str, str], unique_prefix: str) -> AsyncIterator[FastRedis]:
    """The limiter's own client; ``inspect`` looks at what it wrote."""
    client = make_limiter_redis(Settings.from_env(redis_env))
    yield client
    await client.aclose()


@pytest.fixture
async def inspect(redis_env: dict[str, str], unique_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = make_redis(Settings.from_env(redis_env))
    yield client
    async for key in client.scan_iter(match=f"{unique_prefix}*"):
        await client.delete(key)
    await client.aclose()


def limiter_for(store: SqlStore, redis: FastRedis, prefix: str, **kwargs: Any) -> RedisLimiter:
    config = kwargs.pop("config", LimitConfig())
    return RedisLimiter(config, store, redis, KeyLayout(prefix, SECRET), **kwargs)


async def admitted(limiter: RedisLimiter, token: Any, n: int, **kwargs: Any) -> int:
    """Try ``n`` requests; return how many got through before the quota said no."""
    for i in range(n):
        try:
            await limiter.admit(token, "", **kwargs)
        except QuotaExceeded:
            return i
    return n


async def test_the_quota_starts_from_what_the_database_knows(
    sqlite_store: SqlStore, redis: FastRedis, unique_prefix: str
) -> None:
    """Used = request_count - cache_hit_count (hits do not count): 150 - 30 = 120 of 125."""
    token = await make_token(sqlite_store, max_requests=125)
    await set_usage(sqlite_store, token.id, requests=150, cache_hits=30)
    limiter = limiter_for(sqlite_store, redis, unique_prefix)
    assert await admitted(limiter, token, 10) == 5

    counting = await make_token(sqlite_store, max_requests=125)
    await set_usage(sqlite_store, counting.id, requests=150, cache_hits=30)
    limiter = limiter_for(
        sqlite_store, redis, unique_prefix, config=LimitConfig(count_cache_hits=True)
    )
    assert await admitted(limiter, counting, 10) == 0


async def test_a_changed_token_counts_from_the_database(
    sqlite_store: SqlStore, redis: FastRedis, unique_prefix: str
) -> None:
    """While a token is unlimited its quota is not counted; limiting it again counts from the
    larger of the database's counter and the event aggregates."""
    token = await make_token(sqlite_store, max_requests=5)
    limiter = limiter_for(sqlite_store, redis, unique_prefix)
    assert await admitted(limiter, token, 3) == 3
    unlimited = await sqlite_store.update_token(token.id, {"max_requests": None})
    assert unlimited is not None
    assert await admitted(limiter, unlimited, 10) == 10
    await set_usage(sqlite_store, token.id, requests=13, cache_hits=0)  # the events arrived
    limited = await sqlite_store.update_token(token.id, {"max_requests": 15})
    assert limited is not None
    assert await admitted(limiter, limited, 10) == 2


async def test_no_token_id_or_address_in_any_key(
    sqlite_store: SqlStore, redis: FastRedis, inspect: aioredis.Redis, unique_prefix: str
) -> None:
    token = await make_token(sqlite_store, rpm=50, max_requests=50, max_concurrency=5)
    config = LimitConfig(global_limit=100, ip_limit=50)
    limiter = limiter_for(sqlite_store, redis, unique_prefix, config=config)
    admission = await limiter.admit(token, "198.51.100.77")
    keys = [k.decode() async for k in inspect.scan_iter(match=f"{unique_prefix}*")]
    assert len(keys) == 4, keys  # global, ip, token window, leases (the quota is in the db)
    compact_id = token.id.replace("-", "")
    for key in keys:
        assert key.startswith(unique_prefix + HASH_TAG + ":")
        assert token.id not in key and compact_id not in key and "198.51.100" not in key
        kind = await inspect.type(key)
        members = (
            [m.decode() for m in await inspect.zrange(key, 0, -1)]
            if kind == b"zset"
            else [(await inspect.get(key)).decode()]
        )
        assert all(token.id not in m for m in members)
    # Another secret: other digests, so a dump cannot be matched against token ids.
    assert KeyLayout(unique_prefix, b"other").token_keys(token.id)[0] not in keys
    await admission.release()
    await limiter.close()


async def test_script_is_reloaded_after_noscript(
    sqlite_store: SqlStore, private_redis: RedisProcess, unique_prefix: str
) -> None:
    client = make_limiter_redis(Settings.from_env({"REDIS_ADDR": private_redis.addr}))
    token = await make_token(sqlite_store, max_requests=3)
    limiter = limiter_for(sqlite_store, client, unique_prefix)
    await limiter.admit(token, "")
    flusher = make_redis(Settings.from_env({"REDIS_ADDR": private_redis.addr}))
    await flusher.script_flush()
    await flusher.aclose()
    await limiter.admit(token, "")
    await limiter.admit(token, "")
    with pytest.raises(QuotaExceeded):
        await limiter.admit(token, "")
    await client.aclose()


async def test_redis_stopped_mid_run_falls_back_to_local_limits(
    sqlite_store: SqlStore,
    private_redis: RedisProcess,
    unique_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_limiter_redis(Settings.from_env({"REDIS_ADDR": private_redis.addr}))
    stats = LimitStats()
    token = await make_token(sqlite_store, rpm=3, max_requests=7)
    limiter = limiter_for(sqlite_store, client, unique_prefix, stats=stats, retry_after_failure=0.0)
    await limiter.admit(token, "")
    await limiter.admit(token, "")
    assert stats.fallbacks == 0

    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="llm_proxy.limits"):
        await limiter.admit(token, "")  # per-process window: empty, so three fit
        await limiter.admit(token, "")
        await limiter.admit(token, "")
        with pytest.raises(RateLimited):
            await limiter.admit(token, "")
    assert stats.fallbacks == 4 and stats.limited["token"] == 1
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per request

    # The quota stayed exact: the database counted all of them, 2 before the outage + 3.
    assert await sqlite_store.get_quota_used(token.id, count_cache_hits=False) == 5

    private_redis.start()  # same port, empty: nothing of the quota was in it
    with caplog.at_level(logging.WARNING, logger="llm_proxy.limits"):
        await limiter.admit(token, "")
    assert stats.fallbacks == 4
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    await limiter.admit(token, "")
    with pytest.raises(QuotaExceeded):  # 5 + 2 = 7 (the window still has room)
        await limiter.admit(token, "")
    await limiter.close()
    await client.aclose()


async def test_redis_stopped_with_fallback_off_fails_closed(
    sqlite_store: SqlStore, private_redis: RedisProcess, unique_prefix: str
) -> None:
    client = make_limiter_redis(Settings.from_env({"REDIS_ADDR": private_redis.addr}))
    token = await make_token(sqlite_store, rpm=100)
    limiter = limiter_for(sqlite_store, client, unique_prefix, fallback=False)
    await limiter.admit(token, "")
    private_redis.stop()
    for _ in range(3):
        with pytest.raises(Unavailable) as info:
            await limiter.admit(token, "")
        assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    assert limiter.stats.unavailable == 3 and limiter.stats.fallbacks == 0
    await client.aclose()


async def test_the_quota_is_exact_when_redis_returns_with_its_data(
    sqlite_store: SqlStore, private_redis: RedisProcess, unique_prefix: str
) -> None:
    """Redis unreachable but not restarted: the database counted the quota before, during and
    after, so the total is exactly max_requests; Redis holds no count that could lag."""
    proxy = await TcpProxy(private_redis.port).start()
    client = make_limiter_redis(Settings.from_env({"REDIS_ADDR": f"127.0.0.1:{proxy.port}"}))
    token = await make_token(sqlite_store, max_requests=10, rpm=100)
    limiter = limiter_for(sqlite_store, client, unique_prefix, retry_after_failure=0.0)
    assert await admitted(limiter, token, 3) == 3
    await proxy.cut()
    assert await admitted(limiter, token, 2) == 2
    assert limiter.stats.fallbacks == 2
    await proxy.restore()
    assert await admitted(limiter, token, 10) == 5
    assert limiter.stats.fallbacks == 2
    await limiter.close()
    await client.aclose()
    await proxy.cut()


async def test_leases_expire_unless_renewed(
    sqlite_store: SqlStore, redis: FastRedis, unique_prefix: str
) -> None:
    clock = FakeClock()
    token = await make_token(sqlite_store, max_concurrency=1)
    holder = limiter_for(sqlite_store, redis, unique_prefix, clock=clock, lease_ttl=30.0)
    other = limiter_for(sqlite_store, redis, unique_prefix, clock=clock, lease_ttl=30.0)
    await holder.admit(token, "")
    clock.now += 20
    with pytest.raises(RateLimited):
        await other.admit(token, "")
    await holder.renew_leases()  # a long stream: its worker keeps the lease alive
    clock.now += 25  # 45 s after admission, 25 s after renewal
    with pytest.raises(RateLimited):
        await other.admit(token, "")
    clock.now += 6  # the holder stopped renewing (it died): the lease lapses
    lease = await other.admit(token, "")
    await lease.release()
    await holder.close()
    await other.close()


async def test_a_dead_workers_lease_lapses(
    db_path: str,
    sqlite_store: SqlStore,
    redis_env: dict[str, str],
    redis: FastRedis,
    unique_prefix: str,
) -> None:
    token = await make_token(sqlite_store, max_concurrency=1)
    env = {**redis_env, "DATABASE_URL": db_path}
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=hold_lease_and_die, args=(env, token.id, unique_prefix, ready))
    child.start()
    child.join(60)
    assert ready.is_set() and child.exitcode == 0
    limiter = limiter_for(sqlite_store, redis, unique_prefix)
    with pytest.raises(RateLimited):  # its lease (3 s) outlives it for a moment
        await limiter.admit(token, "")
    for _ in range(100):  # then lapses, with no one to release it
        try:
            admission = await limiter.admit(token, "")
        except RateLimited:
            import asyncio

            await asyncio.sleep(0.1)
        else:
            await admission.release()
            break
    else:
        pytest.fail("the dead worker's lease never lapsed")
    await limiter.close()


def test_distributed_settings() -> None:
    with pytest.raises(Exception, match="DISTRIBUTED_RATE_LIMIT_KEY_SECRET"):
        Settings.from_env({"DISTRIBUTED_RATE_LIMIT_ENABLED": "true"})
    with pytest.raises(Exception, match="DISTRIBUTED_RATE_LIMIT_PREFIX must be"):
        Settings.from_env({"DISTRIBUTED_RATE_LIMIT_PREFIX": "rl:{x}:"})
    settings = Settings.from_env(
        {
            "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
            "DISTRIBUTED_RATE_LIMIT_KEY_SECRET": "s3cret",
            "DISTRIBUTED_RATE_LIMIT_WINDOW": "30s",
            "DISTRIBUTED_RATE_LIMIT_MAX": "20",
        }
    )
    config = LimitConfig.from_settings(settings)
    assert (config.global_limit, config.ip_limit) == (0, 1200)
    assert (config.token_default, config.token_default_window) == (20, 30.0)
    local = LimitConfig.from_settings(Settings.from_env({}))
    assert local.token_default == 0  # DISTRIBUTED_RATE_LIMIT_MAX belongs to distributed mode
    assert "s3cret" not in repr(settings)


async def test_make_limiter_picks_the_backend(
    sqlite_store: SqlStore, redis_env: dict[str, str]
) -> None:
    from proxy.limits import LocalLimiter

    assert isinstance(make_limiter(Settings.from_env({}), sqlite_store), LocalLimiter)
    settings = Settings.from_env(
        {**redis_env, "DISTRIBUTED_RATE_LIMIT_ENABLED": "true", "ENCRYPTION_KEY": "k" * 43}
    )
    with pytest.raises(ValueError, match="need a Redis client"):
        make_limiter(settings, sqlite_store)
    client = make_limiter_redis(settings)
    limiter = make_limiter(settings, sqlite_store, client)
    assert isinstance(limiter, RedisLimiter) and limiter.fallback
    await limiter.close()
    await client.aclose()
