"""The Redis Streams bus against a Redis of the test's own that it stops and restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.bus import RedisStreamsBus, make_bus
from shared.config import Settings
from shared.events import RequestEvent
from shared.store import SqlStore
from shared.streams import EVENT_FIELD
from tests.pipeline_kit import Owners, Running, options, pending, seed, wait_for
from tests.services import RedisProcess

# part of the fault suite (docs/operations.md, "Fault matrix")
pytestmark = pytest.mark.fault

KEY = "llm-proxy-events"


def client(server: RedisProcess) -> aioredis.Redis:
    return aioredis.Redis.from_url(f"redis://{server.addr}", socket_timeout=1)


def bus_for(server: RedisProcess, spool_dir: Path, max_bytes: int = 1 << 22) -> RedisStreamsBus:
    settings = Settings.from_env(
        {
            "LLM_PROXY_EVENT_BUS": "redis-streams",
            "REDIS_ADDR": server.addr,
            "REDIS_TIMEOUT": "500ms",
            "EVENT_SPOOL_DIR": str(spool_dir),
            "EVENT_SPOOL_MAX_BYTES": str(max_bytes),
            "OBSERVABILITY_BUFFER_SIZE": "200",
        }
    )
    bus = make_bus(settings, store=None)  # type: ignore[arg-type]  # the store is the memory bus's
    assert isinstance(bus, RedisStreamsBus)
    return bus


async def stream_ids(redis: aioredis.Redis) -> list[str]:
    rows: Any = await redis.xrange(KEY)
    return [RequestEvent.from_bytes(fields[EVENT_FIELD]).event_id for _, fields in rows]


async def publish(bus: RedisStreamsBus, owners: Owners, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        event = owners.event(i)
        bus.publish(event)
        ids.append(event.event_id)
        if i % 20 == 0:
            await asyncio.sleep(0.01)  # let the sender run, as a serving proxy would
    return ids


async def test_an_outage_is_spooled_and_replayed_in_order(
    private_redis: RedisProcess, tmp_path: Path, store: SqlStore
) -> None:
    owners = await seed(store)
    bus = bus_for(private_redis, tmp_path)
    await bus.start()
    redis = client(private_redis)
    first = await publish(bus, owners, 50)
    await wait_for(lambda: _length_is(redis, 50), what="50 entries")
    private_redis.stop()
    during = await publish(bus, owners, 300, start=50)
    await wait_for(lambda: _true(bus.spooled >= 300), what="spooled")
    assert bus.can_record() and bus.dropped == 0 and not bus.redis_ok
    assert bus.pending() == 300
    private_redis.start()  # empty: this Redis keeps nothing on disk
    await redis.connection_pool.disconnect()
    await wait_for(lambda: _true(bus.pending() == 0), what="replay")
    assert await stream_ids(redis) == during  # in the order published, none twice
    assert bus.redis_ok and bus.dropped == 0 and bus.published == 350
    after = await publish(bus, owners, 10, start=350)
    await bus.close()
    assert await stream_ids(redis) == during + after
    assert first and list(tmp_path.glob("*.jsonl")) == []
    await redis.aclose()


async def test_rows_are_exactly_n_across_a_redis_restart(
    private_redis: RedisProcess, tmp_path: Path, store: SqlStore
) -> None:
    """The proxy keeps publishing while its Redis is down; the dispatcher reconnects, recreates
    its group on the fresh Redis, and the spool's events arrive: exactly N rows."""
    owners = await seed(store)
    bus = bus_for(private_redis, tmp_path / "spool")
    await bus.start()
    redis = client(private_redis)
    running = Running(redis, store, options(KEY))
    await publish(bus, owners, 200)
    await wait_for(lambda: _rows(store, 200), what="first 200 rows")
    private_redis.stop()
    await publish(bus, owners, 300, start=200)
    assert bus.dropped == 0
    private_redis.start()
    await wait_for(lambda: _rows(store, 500), what="500 rows")
    await wait_for(lambda: _no_pending(redis), what="pending 0")
    assert await owners.counts(store) == owners.expected
    await bus.close()
    await running.stop()
    assert await store.count_events() == 500
    await redis.aclose()


async def test_can_record_turns_false_when_redis_is_down_and_the_spool_is_full(
    private_redis: RedisProcess, tmp_path: Path, store: SqlStore
) -> None:
    """EVENT_BUS_FAILURE_MODE=reject relies on this: the proxy answers 503 whenever nothing
    could record the request, and every event published while it said yes is kept."""
    owners = await seed(store)
    bus = bus_for(private_redis, tmp_path, max_bytes=40_000)
    await bus.start()
    private_redis.stop()
    published: list[str] = []
    for i in range(5000):
        if not bus.can_record():
            break
        event = owners.event(i)
        bus.publish(event)
        published.append(event.event_id)
        await asyncio.sleep(0)
    assert not bus.can_record() and len(published) < 5000
    await wait_for(lambda: _true(bus.buffered() == 0), what="the sender spilled what it held")
    assert bus.dropped == 0 and bus.spooled == len(published)
    private_redis.start()
    redis = client(private_redis)
    await wait_for(lambda: _true(bus.pending() == 0), what="replay")
    assert bus.can_record()
    assert await stream_ids(redis) == published
    await bus.close()
    await redis.aclose()


async def test_nothing_can_record_without_redis_or_a_usable_spool(
    private_redis: RedisProcess, tmp_path: Path, store: SqlStore
) -> None:
    owners = await seed(store)
    blocker = tmp_path / "file"
    blocker.write_text("")
    bus = bus_for(private_redis, blocker / "spool")
    await bus.start()
    assert bus.can_record()  # Redis answers
    private_redis.stop()
    bus.publish(owners.event(0))
    await wait_for(lambda: _true(not bus.redis_ok), what="the failure noticed")
    assert not bus.can_record()
    private_redis.start()
    await wait_for(lambda: _true(bus.can_record()), timeout=15, what="recovery")
    await bus.close()
    redis = client(private_redis)
    assert len(await stream_ids(redis)) == 1  # held in memory meanwhile, then sent
    await redis.aclose()


async def test_a_new_worker_replays_what_a_stopped_one_left(
    private_redis: RedisProcess, tmp_path: Path, store: SqlStore
) -> None:
    owners = await seed(store)
    old = bus_for(private_redis, tmp_path)
    await old.start()
    private_redis.stop()
    ids = await publish(old, owners, 120)
    await old.close()  # Redis is down: the events stay in the spool
    assert old.spooled == 120 and list(tmp_path.glob("*.jsonl"))
    private_redis.start()
    new = bus_for(private_redis, tmp_path)
    await new.start()
    redis = client(private_redis)
    await wait_for(lambda: _length_is(redis, 120), what="adopted events replayed")
    assert await stream_ids(redis) == ids
    await new.close()
    assert list(tmp_path.glob("*.jsonl")) == []
    await redis.aclose()


@pytest.mark.parametrize("mode", ["spool", "reject"])
def test_the_failure_mode_setting(mode: str) -> None:
    assert Settings.from_env({"EVENT_BUS_FAILURE_MODE": mode}).event_bus_failure_mode == mode


async def _true(value: bool) -> bool:
    return value


async def _length_is(redis: aioredis.Redis, n: int) -> bool:
    return int(await redis.xlen(KEY)) == n


async def _rows(store: SqlStore, n: int) -> bool:
    count = await store.count_events()
    assert count <= n
    return count == n


async def _no_pending(redis: aioredis.Redis) -> bool:
    return await pending(redis, KEY, "llm-proxy-dispatchers") == 0


async def test_a_failing_sender_is_restarted_logged_and_counted(
    private_redis: RedisProcess,
    tmp_path: Path,
    store: SqlStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A spool file turned into a directory under the worker makes every replay raise: the
    sender restarts (logged with its traceback, counted) instead of dying silently; once the
    cause is gone the rest flows again, the unreadable file's events counted as dropped."""
    owners = await seed(store)
    bus = bus_for(private_redis, tmp_path)
    await bus.start()
    redis = client(private_redis)
    private_redis.stop()
    lost = await publish(bus, owners, 30)
    await wait_for(lambda: _true(bus.spooled >= 30), what="spooled")
    (segment,) = tmp_path.glob("*.jsonl")
    segment.unlink()
    segment.mkdir()  # reads now fail with IsADirectoryError, which nothing expects
    with caplog.at_level("ERROR", logger="llm_proxy.bus"):
        private_redis.start()
        await wait_for(lambda: _true(bus.restarts >= 1), what="a restart")
    assert any("restarting it" in r.getMessage() and r.exc_info for r in caplog.records)
    # Published meanwhile: spooled into the file the worker still had open (unlinked above),
    # so they go with it.
    meanwhile = await publish(bus, owners, 20, start=30)
    segment.rmdir()  # the operator cleans up: that file's events are counted as dropped
    await wait_for(lambda: _true(bus.pending() == 0), what="the file skipped", timeout=60)
    fresh = await publish(bus, owners, 20, start=50)
    await wait_for(lambda: _true(bus.pending() == 0), what="the rest sent", timeout=60)
    await bus.close()
    assert await stream_ids(redis) == fresh
    assert bus.dropped == len(lost) + len(meanwhile)
    await redis.aclose()
