"""One contract for both limiters (per-process and Redis): windows, quotas, leases, headers."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.limits import (
    NO_LIMITS,
    LimitConfig,
    Limiter,
    LocalLimiter,
    RedisLimiter,
    TokenLimits,
    make_limiter_redis,
)
from proxy.limits.keys import KeyLayout
from shared.config import Settings
from shared.errors import QuotaExceeded, RateLimited, Unavailable, error_body
from shared.redis import make_redis
from shared.store import SqlStore, make_store
from tests.limits_support import T0, FakeClock, make_token
from tests.services import free_port

Build = Callable[..., Limiter]


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = make_store(Settings.from_env({"DATABASE_URL": str(tmp_path / "limits.db")}))
    await store.open()
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["local", "redis", pytest.param("cluster", marks=pytest.mark.cluster)])
async def build(
    request: pytest.FixtureRequest, sqlite_store: SqlStore, clock: FakeClock
) -> AsyncIterator[Build]:
    """Makes limiters of one kind over the same store and clock."""
    made: list[Limiter] = []
    clients: list[Any] = []
    prefix = ""
    if request.param != "local":
        # "cluster": each token's keys in its own slot, checked in two parts (spread.py)
        env = request.getfixturevalue("redis_env" if request.param == "redis" else "cluster_env")
        prefix = request.getfixturevalue("unique_prefix")
        redis = make_limiter_redis(Settings.from_env(env))
        clients.append(redis)

    def make(config: LimitConfig, **kwargs: Any) -> Limiter:
        limiter: Limiter
        if request.param == "local":
            limiter = LocalLimiter(config, sqlite_store, clock=clock)
        else:
            keys = KeyLayout(prefix, b"contract-secret", spread=request.param == "cluster")
            limiter = RedisLimiter(config, sqlite_store, redis, keys, clock=clock, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()
    for client in clients:
        await client.aclose()
    if request.param != "local":
        cleaner = make_redis(Settings.from_env(env))
        async for key in cleaner.scan_iter(match=f"{prefix}*"):
            await cleaner.delete(key)
        await cleaner.aclose()


async def refused(call: Awaitable[Any]) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await call
    return info.value


async def test_no_2x_burst_at_the_window_edge(
    build: Build, sqlite_store: SqlStore, clock: FakeClock
) -> None:
    token = await make_token(sqlite_store, rpm=10)
    limiter = build(LimitConfig())
    clock.now = T0 + 59.9  # just before a fixed window would reset
    for _ in range(10):
        await limiter.admit(token, "")
    exc = await refused(limiter.admit(token, ""))
    assert exc.status == 429 and exc.code == "rate_limit_exceeded"

    clock.now = T0 + 60.1  # a fixed-window counter would admit 10 more here
    exc = await refused(limiter.admit(token, ""))
    assert exc.headers["Retry-After"] == "60"  # 59.8 s until the first of the ten leaves
    clock.now = T0 + 119.8
    await refused(limiter.admit(token, ""))
    clock.now = T0 + 120.0
    for _ in range(10):
        await limiter.admit(token, "")
    await refused(limiter.admit(token, ""))
    assert limiter.stats.limited["token"] == 4


async def test_never_more_than_the_limit_in_any_window_and_no_needless_refusal(
    build: Build, sqlite_store: SqlStore, clock: FakeClock
) -> None:
    """Random arrivals over five minutes: every admitted request saw fewer than the limit in
    the 60 s before it, and every refused one saw exactly the limit (the log is exact)."""
    limit = 7
    token = await make_token(sqlite_store)
    limiter = build(LimitConfig(global_limit=limit))
    rng = random.Random(6)
    times = sorted(T0 + rng.randrange(0, 300_000) / 1000 for _ in range(120))
    admitted: list[float] = []
    for t in times:
        clock.now = t
        in_window = sum(1 for a in admitted if a > t - 60)
        try:
            await limiter.admit(token, "")
        except RateLimited:
            assert in_window == limit, t
        else:
            assert in_window < limit, t
            admitted.append(t)
    assert 30 < len(admitted) < len(times)


async def test_limits_combine_and_headers_describe_the_tightest(
    build: Build, sqlite_store: SqlStore, clock: FakeClock
) -> None:
    token = await make_token(sqlite_store, rpm=3)
    limiter = build(LimitConfig(global_limit=100, ip_limit=5))
    first = await limiter.admit(token, "198.51.100.1")
    assert first.headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": "60",
    }
    clock.now += 10
    await limiter.admit(token, "198.51.100.1")
    third = await limiter.admit(token, "198.51.100.1")
    assert third.headers()["X-RateLimit-Remaining"] == "0"
    assert third.headers()["X-RateLimit-Reset"] == "50"  # when the first leaves the window
    exc = await refused(limiter.admit(token, "198.51.100.1"))
    assert exc.headers == {
        "Retry-After": "50",
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "50",
    }
    assert "this token" in error_body(exc)["error"]["message"]

    # The same address with other tokens meets the IP limit (5): two more, then refused.
    other = await make_token(sqlite_store)
    await limiter.admit(other, "198.51.100.1")
    await limiter.admit(other, "198.51.100.1")
    exc = await refused(limiter.admit(other, "198.51.100.1"))
    assert "your address" in exc.message
    await limiter.admit(other, "198.51.100.2")  # another address is not affected
    assert limiter.stats.limited["ip"] == 1 and limiter.stats.limited["token"] == 1


async def test_refused_requests_do_not_use_up_the_window(
    build: Build, sqlite_store: SqlStore, clock: FakeClock
) -> None:
    token = await make_token(sqlite_store, rpm=2)
    limiter = build(LimitConfig())
    await limiter.admit(token, "")
    clock.now += 30
    await limiter.admit(token, "")
    for _ in range(5):
        clock.now += 5
        await refused(limiter.admit(token, ""))
    clock.now = T0 + 60  # only the first admitted one has left
    await limiter.admit(token, "")
    await refused(limiter.admit(token, ""))


async def test_zero_means_off_and_nothing_applies_costs_nothing(
    build: Build, sqlite_store: SqlStore
) -> None:
    token = await make_token(sqlite_store, rpm=0)
    limiter = build(LimitConfig(global_limit=0, ip_limit=0, token_default=5))
    for _ in range(50):  # rpm=0 exempts the token from the deployment's default
        assert await limiter.admit(token, "198.51.100.1") is NO_LIMITS
    limited = await make_token(sqlite_store)
    for _ in range(5):
        await limiter.admit(limited, "")
    await refused(limiter.admit(limited, ""))


async def test_quota_is_exact_and_cache_hits_do_not_count(
    build: Build, sqlite_store: SqlStore
) -> None:
    token = await make_token(sqlite_store, max_requests=3)
    limiter = build(LimitConfig())
    for _ in range(4):
        await limiter.admit(token, "", cache_hit=True)  # free
    for _ in range(3):
        await limiter.admit(token, "")
    with pytest.raises(QuotaExceeded) as info:
        await limiter.admit(token, "")
    exc = info.value
    assert exc.status == 429 and exc.code == "quota_exceeded"
    assert exc.headers == {"x-should-retry": "false"}
    with pytest.raises(QuotaExceeded):  # an exhausted token is exhausted, cached answers too
        await limiter.admit(token, "", cache_hit=True)
    assert limiter.stats.limited["quota"] == 2


async def test_cache_hits_count_when_configured(build: Build, sqlite_store: SqlStore) -> None:
    token = await make_token(sqlite_store, max_requests=3)
    limiter = build(LimitConfig(count_cache_hits=True))
    await limiter.admit(token, "", cache_hit=True)
    await limiter.admit(token, "")
    await limiter.admit(token, "", cache_hit=True)
    with pytest.raises(QuotaExceeded):
        await limiter.admit(token, "")


async def test_quota_refusal_takes_no_rate_slot(
    build: Build, sqlite_store: SqlStore, clock: FakeClock
) -> None:
    token = await make_token(sqlite_store, max_requests=1, rpm=3)
    limiter = build(LimitConfig())
    await limiter.admit(token, "")
    for _ in range(5):
        with pytest.raises(QuotaExceeded):
            await limiter.admit(token, "")
    other_limit_token = await make_token(sqlite_store, rpm=3)
    for _ in range(3):  # and the global log was not touched either
        await limiter.admit(other_limit_token, "")


async def test_concurrency_leases(build: Build, sqlite_store: SqlStore) -> None:
    token = await make_token(sqlite_store, max_concurrency=2)
    limiter = build(LimitConfig())
    first = await limiter.admit(token, "")
    second = await limiter.admit(token, "")
    exc = await refused(limiter.admit(token, ""))
    assert exc.headers["Retry-After"] == "1" and "in flight" in exc.message
    await first.release()
    await first.release()  # repeated release frees nothing more
    third = await limiter.admit(token, "")
    await refused(limiter.admit(token, ""))
    await second.release()
    await third.release()
    for _ in range(2):
        await limiter.admit(token, "")
    assert limiter.stats.limited["concurrency"] == 2


async def test_no_limits_make_no_redis_call(sqlite_store: SqlStore) -> None:
    """Nothing applies: admitted without touching Redis (here: a port nobody listens on, and
    fallback off, so any Redis call would raise Unavailable)."""
    token = await make_token(sqlite_store)
    redis = make_limiter_redis(Settings.from_env({"REDIS_ADDR": f"127.0.0.1:{free_port()}"}))
    limiter = RedisLimiter(
        LimitConfig(), sqlite_store, redis, KeyLayout("x:", b"k"), fallback=False
    )
    assert await limiter.admit(token, "198.51.100.1") is NO_LIMITS
    assert await limiter.admit(None, "198.51.100.1") is NO_LIMITS
    limited = await make_token(sqlite_store, rpm=5)
    with pytest.raises(Unavailable):
        await limiter.admit(limited, "")
    await redis.aclose()


async def test_token_limits_stand_in_for_the_row(build: Build, sqlite_store: SqlStore) -> None:
    """What a pipeline keeps in its auth cache (``TokenLimits.of(row)``) limits alike."""
    token = await make_token(sqlite_store, max_requests=2, max_concurrency=1)
    limits = TokenLimits.of(token)
    limiter = build(LimitConfig())
    first = await limiter.admit(limits, "")
    await refused(limiter.admit(limits, ""))  # the one slot is taken
    await first.release()
    await (await limiter.admit(token, "")).release()  # the row and its limits are one token
    with pytest.raises(QuotaExceeded):
        await limiter.admit(limits, "")
