"""One contract for both event buses: the in-memory bus and the Redis Streams bus (with a real
dispatcher behind it), over SQLite and Postgres."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from proxy.bus import MemoryBus, RedisStreamsBus, Spool, SpoolingBus
from proxy.redis_client import FastRedis
from shared.config import RedisSettings
from shared.events import EventBus
from shared.store import SqlStore
from tests.pipeline_kit import Owners, Running, options, pending, seed, wait_for


@dataclass
class Kit:
    bus: EventBus
    store: SqlStore
    owners: Owners
    settle: Callable[[int], Awaitable[None]]  # wait until this many events are recorded


@pytest.fixture(params=["memory", "redis"])
async def kit(
    request: pytest.FixtureRequest,
    store: SqlStore,
    tmp_path: Path,
    unique_prefix: str,
) -> AsyncIterator[Kit]:
    owners = await seed(store)
    if request.param == "memory":
        bus: EventBus = MemoryBus(store, Spool(str(tmp_path / "spool"), 1 << 20), capacity=500)

        async def settle_memory(n: int) -> None:
            await wait_for(lambda: _count_is(store, n), what=f"{n} rows")

        await bus.start()
        yield Kit(bus, store, owners, settle_memory)
        await bus.close()
        return
    env = request.getfixturevalue("redis_env")
    redis = aioredis.Redis.from_url(f"redis://{env['REDIS_ADDR']}")
    key = f"{unique_prefix}events"
    fast = FastRedis(RedisSettings.parse(env["REDIS_ADDR"]))
    bus = RedisStreamsBus(
        fast, key, Spool(str(tmp_path / "spool"), 1 << 20), capacity=500, owns_redis=True
    )
    running = Running(redis, store, options(key))

    async def settle_redis(n: int) -> None:
        await wait_for(lambda: _count_is(store, n), what=f"{n} rows")
        await wait_for(lambda: _no_pending(redis, key), what="pending 0")

    await bus.start()
    yield Kit(bus, store, owners, settle_redis)
    await bus.close()
    await running.stop()
    await redis.delete(key)
    await redis.aclose()


async def _count_is(store: SqlStore, n: int) -> bool:
    count = await store.count_events()
    assert count <= n, f"{count} rows, more than the {n} events published"
    return count == n


async def _no_pending(redis: aioredis.Redis, key: str) -> bool:
    return await pending(redis, key, "llm-proxy-dispatchers") == 0


def test_publish_is_a_plain_function() -> None:
    """The proxy calls publish on its hot path: it must not be something to await."""
    for cls in (MemoryBus, RedisStreamsBus):
        assert not inspect.iscoroutinefunction(cls.publish)
        assert not inspect.iscoroutinefunction(cls.can_record)


async def test_every_event_is_recorded_once_with_exact_aggregates(kit: Kit) -> None:
    events = []
    for i in range(300):
        extra: dict[str, object] = {}
        if i % 10 == 0:
            extra["cache_status"] = "hit"
        if i % 25 == 0:
            extra = {"status": 429, "error": "rate_limit_exceeded", "prompt_tokens": 0}
        events.append(kit.owners.event(i, **extra))
    for event in events:
        kit.bus.publish(event)
    await kit.settle(len(events))
    assert await kit.owners.counts(kit.store) == kit.owners.expected
    rejected = sum(1 for e in events if e.error)
    assert rejected and sum(kit.owners.expected.values()) == len(events) - rejected
    proj = await kit.store.get_project(kit.owners.project_id)
    assert proj is not None
    assert proj.request_count == len(events) - rejected
    assert proj.cache_hit_count == sum(1 for e in events if e.cache_status == "hit")
    assert proj.prompt_tokens == sum(e.prompt_tokens for e in events)
    assert kit.bus.published == len(events) and kit.bus.dropped == 0
    assert kit.bus.pending() == 0


async def test_a_repeated_event_counts_once(kit: Kit) -> None:
    event = kit.owners.event(0)
    kit.bus.publish(event)
    kit.bus.publish(event)
    await kit.settle(1)
    assert await kit.owners.counts(kit.store) == kit.owners.expected


async def test_close_flushes_what_is_buffered(kit: Kit) -> None:
    for i in range(50):
        kit.bus.publish(kit.owners.event(i))
    assert kit.bus.pending() == 50  # nothing was sent yet: publish did not yield
    await kit.bus.close()
    assert kit.bus.pending() == 0
    await kit.settle(50)
    assert not kit.bus.can_record()  # closed


async def test_can_record_turns_false_before_anything_is_dropped(kit: Kit) -> None:
    """Publish without ever yielding (the sender cannot run): the bus says it cannot record
    before it drops anything, so reject mode never serves a request whose event is lost. What
    is published after that is either recorded or counted as dropped."""
    published = 0
    while kit.bus.can_record() and published < 20_000:
        kit.bus.publish(kit.owners.event(published))
        published += 1
    assert not kit.bus.can_record()
    assert kit.bus.dropped == 0
    for i in range(100):
        kit.bus.publish(kit.owners.event(published + i))
    await kit.bus.close()
    assert kit.bus.dropped <= 100
    await kit.settle(published + 100 - kit.bus.dropped)
    assert sum((await kit.owners.counts(kit.store)).values()) == published + 100 - kit.bus.dropped


async def test_an_event_that_cannot_be_recorded_is_dropped_and_the_rest_flow(kit: Kit) -> None:
    """Usage numbers no column (nor JSON encoder) takes: that one event is dropped, counted and
    logged; the sender keeps going and every good event after it is recorded."""
    poison = kit.owners.event(0)
    poison.prompt_tokens = 2**64
    kit.owners.expected[poison.token_id] -= 1
    good = [kit.owners.event(i) for i in range(1, 53)]
    kit.bus.publish(poison)
    for event in good:
        kit.bus.publish(event)
    await kit.settle(len(good))
    assert await kit.owners.counts(kit.store) == kit.owners.expected
    assert kit.bus.unrecordable == 1
    for event in (kit.owners.event(100), kit.owners.event(101)):  # still alive afterwards
        kit.bus.publish(event)
    await kit.settle(len(good) + 2)


async def test_reject_mode_keeps_the_room_it_reserved(kit: Kit) -> None:
    """Strict (reject mode): requests that reserved room get their events kept however full the
    spool gets meanwhile; an unreserved event that would take that room is dropped instead."""
    bus = kit.bus
    assert isinstance(bus, SpoolingBus)
    bus.strict = True
    reserved = [kit.owners.event(i) for i in range(10)]
    assert all(bus.reserve(e.event_id) for e in reserved)
    published = 0
    while bus.can_record() and published < 20_000:  # no yield: the sender cannot drain
        bus.publish(kit.owners.event(100 + published))
        published += 1
    late = kit.owners.event(99_999)
    kit.owners.expected[late.token_id] -= 1
    bus.publish(late)
    assert bus.dropped == 1 and not bus.reserve("another")
    for event in reserved:
        bus.publish(event)
    await bus.close()
    assert bus.dropped == 1
    await kit.settle(published + len(reserved))
    assert await kit.owners.counts(kit.store) == kit.owners.expected
