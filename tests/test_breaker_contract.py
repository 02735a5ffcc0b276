"""One contract for both breaker backends: in-process and Redis (a real server, own prefix).
Time is passed in, so the states are checked at exact instants without waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.upstream.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE_TIMEOUT,
    BreakerPolicy,
    Breakers,
    MemoryBreakers,
)
from proxy.upstream.breaker_redis import RedisBreakers
from shared.config import Settings
from shared.redis import make_redis
from tests.services import RedisProcess

POLICY = BreakerPolicy(failures=3, window=10.0, cooldown=30.0)
T0 = 1_700_000_000.0


@pytest.fixture(params=["in-memory", "redis"])
async def breakers(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Breakers]:
    if request.param == "in-memory":
        yield MemoryBreakers(POLICY)
        return
    env: dict[str, str] = request.getfixturevalue("redis_env")
    client = make_redis(Settings.from_env(env))
    backend = RedisBreakers(client, POLICY, prefix=f"test:breaker:{unique_prefix}:")
    yield backend
    await backend.purge()
    await client.aclose()


async def test_failures_within_the_window_open_it(breakers: Breakers) -> None:
    for i in range(2):
        assert await breakers.failure("u1", T0 + i, None) == CLOSED
    assert await breakers.allow("u1", T0 + 2)
    assert await breakers.failure("u1", T0 + 2, None) == OPEN
    assert not await breakers.allow("u1", T0 + 3)
    assert await breakers.state("u1", T0 + 3) == OPEN
    assert await breakers.allow("u2", T0 + 3)  # one breaker per upstream


async def test_failures_spread_wider_than_the_window_do_not(breakers: Breakers) -> None:
    for i in range(6):
        assert await breakers.failure("u1", T0 + i * 6, None) == CLOSED
    assert await breakers.state("u1", T0 + 40) == CLOSED


async def test_after_the_cooldown_one_probe_goes_and_its_success_closes(breakers: Breakers) -> None:
    for i in range(3):
        await breakers.failure("u1", T0 + i, None)
    later = T0 + 2 + POLICY.cooldown + 0.5
    assert await breakers.state("u1", later) == HALF_OPEN
    assert await breakers.allow("u1", later)  # the probe
    assert not await breakers.allow("u1", later + 0.1)  # only one at a time
    await breakers.success("u1", later + 0.2)
    assert await breakers.state("u1", later + 0.3) == CLOSED
    assert await breakers.allow("u1", later + 0.3)
    # forgotten: it takes three new failures to open again
    assert await breakers.failure("u1", later + 1, None) == CLOSED


async def test_a_failed_probe_opens_it_again(breakers: Breakers) -> None:
    for i in range(3):
        await breakers.failure("u1", T0 + i, None)
    later = T0 + 2 + POLICY.cooldown + 1
    assert await breakers.allow("u1", later)
    assert await breakers.failure("u1", later, None) == OPEN
    assert not await breakers.allow("u1", later + POLICY.cooldown - 1)
    assert await breakers.allow("u1", later + POLICY.cooldown + 1)


async def test_a_probe_that_never_reports_frees_its_slot(breakers: Breakers) -> None:
    for i in range(3):
        await breakers.failure("u1", T0 + i, None)
    later = T0 + 2 + POLICY.cooldown + 1
    assert await breakers.allow("u1", later)
    assert await breakers.allow("u1", later + PROBE_TIMEOUT + 1)


async def test_retry_after_alone_opens_it_for_that_long(breakers: Breakers) -> None:
    assert await breakers.failure("u1", T0, 5.0) == OPEN
    assert not await breakers.allow("u1", T0 + 4.9)
    assert await breakers.allow("u1", T0 + 5.1)
    # a Retry-After longer than the cooldown wins over it
    for i in range(3):
        await breakers.failure("u2", T0 + i, 120.0)
    assert not await breakers.allow("u2", T0 + 2 + POLICY.cooldown + 1)
    assert await breakers.allow("u2", T0 + 2 + 121)


async def test_concurrent_probes_claim_one_slot(breakers: Breakers) -> None:
    for i in range(3):
        await breakers.failure("u1", T0 + i, None)
    later = T0 + 2 + POLICY.cooldown + 1
    allowed = await asyncio.gather(*(breakers.allow("u1", later) for _ in range(20)))
    assert sum(allowed) == 1


async def test_redis_breakers_fail_open_while_redis_is_down() -> None:
    server = RedisProcess().start()
    client = make_redis(Settings.from_env({"REDIS_ADDR": server.addr}))
    backend = RedisBreakers(client, POLICY, prefix="test:breaker:down:")
    try:
        for i in range(3):
            await backend.failure("u1", T0 + i, None)
        assert not await backend.allow("u1", T0 + 3)
        server.stop()
        assert await backend.allow("u1", T0 + 3)  # no state to be had: traffic still flows
        assert await backend.failure("u1", T0 + 4, None) == CLOSED
    finally:
        await client.aclose()
        server.stop()
