"""The dispatcher in-process against the loopback Redis and both stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from dispatcher.health import HealthServer
from dispatcher.metrics import DispatcherMetrics
from dispatcher.shards import make_dispatcher
from proxy.bus import RedisStreamsBus, Spool
from proxy.redis_client import FastRedis
from shared.config import RedisSettings
from shared.store import SqlStore
from shared.streams import EVENT_FIELD, shard_keys
from tests.pipeline_kit import Running, options, pending, seed, wait_for
from tests.services import REDIS_HOST, REDIS_PORT

GROUP = "llm-proxy-dispatchers"


@pytest.fixture
async def redis(redis_env: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"redis://{redis_env['REDIS_ADDR']}")
    yield client
    await client.aclose()


@pytest.fixture
async def key(redis: aioredis.Redis, unique_prefix: str) -> AsyncIterator[str]:
    name = f"{unique_prefix}events"
    yield name
    await redis.delete(name)


async def rows(store: SqlStore, n: int) -> bool:
    count = await store.count_events()
    assert count <= n, f"{count} rows for {n} events"
    return count == n


async def test_two_publishers_and_two_dispatchers_record_exactly_n(
    redis: aioredis.Redis, key: str, store: SqlStore, tmp_path: Path
) -> None:
    owners = await seed(store, tokens=5)
    buses = [
        RedisStreamsBus(
            FastRedis(RedisSettings(REDIS_HOST, REDIS_PORT)),
            key,
            Spool(str(tmp_path / f"s{i}"), 1 << 22),
            capacity=300,
            owns_redis=True,
        )
        for i in range(2)
    ]
    for bus in buses:
        await bus.start()
    workers = [Running(redis, store, options(key, f"d{i}", batch_size=50)) for i in range(2)]
    n = 2000
    for i in range(n):
        buses[i % 2].publish(owners.event(i, cache_status="hit" if i % 7 == 0 else "miss"))
        if i % 50 == 0:
            await asyncio.sleep(0)
    for bus in buses:
        await bus.close()
    await wait_for(lambda: rows(store, n), what=f"{n} rows")
    await wait_for(lambda: _settled(redis, key), what="pending 0")
    assert await owners.counts(store) == owners.expected
    for tok in owners.tokens:
        got = await store.get_token(tok.id)
        assert got is not None and got.prompt_tokens == 3 * owners.expected[tok.id]
    inserted = sum(w.counter("llm_proxy_dispatcher_rows_inserted_total") for w in workers)
    assert inserted == n
    for w in workers:
        await w.stop()


async def _settled(redis: aioredis.Redis, key: str) -> bool:
    return await pending(redis, key, GROUP) == 0


async def test_entries_that_cannot_be_recorded_become_dead_letters(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    owners = await seed(store)
    good = owners.event(1)
    await redis.xadd(key, {EVENT_FIELD: good.to_bytes()})
    poison: list[dict[bytes, bytes]] = [
        {EVENT_FIELD: b"not json"},
        {EVENT_FIELD: b'{"event_id": "x"}'},
        {b"other": b"field"},
        {EVENT_FIELD: owners.event(2, path="/v1/\x00").to_bytes()},
        {EVENT_FIELD: owners.event(3, prompt_tokens=2**63).to_bytes()},  # past BIGINT
        {EVENT_FIELD: b"[" * 70_000},
    ]
    if store.uuid_ids:
        poison.append({EVENT_FIELD: owners.event(4, event_id="not-a-uuid").to_bytes()})
    for fields in poison:
        await redis.xadd(key, fields)  # type: ignore[arg-type]
    running = Running(redis, store, options(key))
    await wait_for(lambda: rows(store, 1), what="the good event")
    await wait_for(lambda: _settled(redis, key), what="all acked")
    letters = await store.list_dead_letters()
    assert len(letters) == len(poison)
    assert {x.reason for x in letters} == {"undecodable"}
    assert [x.payload for x in letters][:2] == [b"not json", b'{"event_id": "x"}']
    assert letters[2].payload == b"other=field"
    assert all(x.error and x.stream_key == key and x.consumer == "d1" for x in letters)
    assert running.counter("llm_proxy_dispatcher_dead_letters_total", reason="undecodable") == len(
        poison
    )
    await running.stop()


async def test_a_row_the_database_refuses_is_isolated_and_dead_lettered(
    redis: aioredis.Redis, key: str, pg_store: SqlStore, pg_database: str
) -> None:
    """A CHECK constraint added for the test makes Postgres refuse one row of a batch."""
    store = pg_store
    owners = await seed(store)
    events = [owners.event(i, model="poison" if i == 37 else "gpt") for i in range(80)]
    for event in events:
        await redis.xadd(key, {EVENT_FIELD: event.to_bytes()})
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE request_events ADD CONSTRAINT no_poison CHECK (model <> 'poison')"
        )
    try:
        running = Running(redis, store, options(key, batch_size=80))
        await wait_for(lambda: rows(store, 79), what="79 rows")
        await wait_for(lambda: _settled(redis, key), what="all acked")
        await running.stop()
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("ALTER TABLE request_events DROP CONSTRAINT no_poison")
    (letter,) = await store.list_dead_letters()
    assert letter.reason == "rejected" and letter.event_id == events[37].event_id
    assert "no_poison" in letter.error
    owners.expected[events[37].token_id] -= 1
    assert await owners.counts(store) == owners.expected


async def test_entries_of_a_dead_consumer_are_claimed_once_idle(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    owners = await seed(store)
    await redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    for i in range(30):
        await redis.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()})
    await redis.xreadgroup(GROUP, "crashed", {key: ">"}, count=30)  # read, never acked
    running = Running(redis, store, options(key, claim_idle=0.5))
    await wait_for(lambda: rows(store, 30), what="30 rows")
    await wait_for(lambda: _settled(redis, key), what="pending 0")
    assert running.counter("llm_proxy_dispatcher_claimed_total") == 30
    assert await owners.counts(store) == owners.expected
    await running.stop()


async def test_a_restarted_consumer_resumes_its_own_pending_entries_first(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    owners = await seed(store)
    await redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    for i in range(25):
        await redis.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()})
    await redis.xreadgroup(GROUP, "d1", {key: ">"}, count=25)  # then "d1" died
    running = Running(redis, store, options(key, "d1", claim_idle=3600))  # no claiming
    await wait_for(lambda: rows(store, 25), what="25 rows")
    await wait_for(lambda: _settled(redis, key), what="pending 0")
    assert running.counter("llm_proxy_dispatcher_claimed_total") == 0
    await running.stop()


async def test_an_entry_delivered_too_often_goes_to_the_dead_letters(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    owners = await seed(store)
    await redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    event = owners.event(0)
    await redis.xadd(key, {EVENT_FIELD: event.to_bytes()})
    for _ in range(3):  # three dispatchers took it and died
        await redis.xreadgroup(GROUP, "crashed", {key: "0" if _ else ">"}, count=1)
    running = Running(redis, store, options(key, claim_idle=0.3, max_deliveries=3))
    await wait_for(lambda: _settled(redis, key), what="acked")
    await running.stop()
    (letter,) = await store.list_dead_letters()
    assert letter.reason == "max_deliveries" and letter.deliveries == 4
    assert letter.event_id == event.event_id and letter.payload == event.to_bytes()
    assert await store.count_events() == 0
    from dispatcher.deadletter import replay_dead_letters

    report = await replay_dead_letters(store, ids=[], reason=None, limit=10)
    assert report.replayed == [letter.id] and report.inserted == 1 and not report.failed
    assert await store.count_events() == 1 and await store.list_dead_letters() == []
    owners_counts = await owners.counts(store)
    assert owners_counts == owners.expected
    again = await replay_dead_letters(store, ids=[letter.id], reason=None, limit=10)
    assert again.replayed == []  # already replayed


async def test_the_stream_is_trimmed_only_below_what_every_group_acknowledged(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    owners = await seed(store)
    await redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    first = [await redis.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()}) for i in range(20)]
    await redis.xgroup_create(key, "audit-copy", id="$")  # a second group, from here on
    for i in range(20, 40):
        await redis.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()})
    running = Running(redis, store, options(key))
    await wait_for(lambda: rows(store, 40), what="40 rows")
    await wait_for(lambda: _length_is(redis, key, 21), what="trimmed to the other group")
    remaining: Any = await redis.xrange(key)
    assert remaining[0][0] == first[-1]  # the other group's position is kept, later ones too
    got: Any = await redis.xreadgroup("audit-copy", "x", {key: ">"}, count=100)
    assert len(got[0][1]) == 20  # nothing the other group still needs was trimmed
    await redis.xack(key, "audit-copy", *[e for e, _ in got[0][1]])
    await wait_for(lambda: _length_is(redis, key, 1), what="trimmed to the last entry")
    assert running.counter("llm_proxy_dispatcher_trimmed_total") == 39
    await running.stop()


async def _length_is(redis: aioredis.Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


async def test_stop_finishes_the_entries_in_hand(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    owners = await seed(store)
    for i in range(500):
        await redis.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()})
    running = Running(redis, store, options(key, batch_size=50, buffer=500))
    await wait_for(lambda: _count_at_least(store, 1), what="the first batch")
    await running.stop()
    recorded = await store.count_events()
    assert recorded > 0
    assert await pending(redis, key, GROUP) == 0  # everything read was written and acked
    info: Any = await redis.xinfo_groups(key)
    assert info[0]["entries-read"] == recorded


async def _count_at_least(store: SqlStore, n: int) -> bool:
    return await store.count_events() >= n


async def test_metrics_health_and_readiness_over_http(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    owners = await seed(store)
    for i in range(10):
        await redis.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()})
    running = Running(redis, store, options(key))
    server = HealthServer(
        running.metrics, refresh=running.dispatcher.refresh_stats, host="127.0.0.1", port=0
    )
    await server.start()
    await wait_for(lambda: rows(store, 10), what="10 rows")
    await wait_for(lambda: _settled(redis, key), what="acked")
    status, body = await _get(server.port, "/metrics")
    assert status == 200
    assert "llm_proxy_dispatcher_rows_inserted_total 10.0" in body
    assert f'llm_proxy_event_stream_pending{{group="{GROUP}",shard="0"}} 0.0' in body
    assert f'llm_proxy_event_stream_lag{{group="{GROUP}",shard="0"}} 0.0' in body
    assert "llm_proxy_dispatcher_batch_duration_seconds_bucket" in body
    assert await _get(server.port, "/health") == (200, '{"status":"ok"}')
    status, body = await _get(server.port, "/ready")
    assert status == 200 and '"database":"up"' in body
    assert (await _get(server.port, "/nope"))[0] == 404
    await server.close()
    await running.stop()


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_stream_gauges_are_per_shard(
    redis: aioredis.Redis, key: str, store: SqlStore
) -> None:
    """Each shard reports its own length, lag and pending: a group that reads nothing of
    shards 1 and 2 shows exactly what each of them holds, not the last shard written."""
    owners = await seed(store)
    keys = shard_keys(key, 3)
    held = {1: 4, 2: 7}
    for shard, n in held.items():
        await redis.xgroup_create(keys[shard], "audit-copy", id="0", mkstream=True)
        for i in range(n):
            await redis.xadd(keys[shard], {EVENT_FIELD: owners.event(i).to_bytes()})
    metrics = DispatcherMetrics()
    dispatcher = make_dispatcher(
        redis, store, options(key), shards=3, metrics=metrics, jobs=None, retention_days=0
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        await wait_for(lambda: rows(store, 11), what="11 rows")

        async def settled() -> bool:
            for k in keys[1:]:
                if await pending(redis, k, GROUP):
                    return False
            return True

        await wait_for(settled, what="every shard acknowledged")
        await dispatcher.refresh_stats()

        def gauge(name: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(name, labels)

        for shard in range(3):
            s = str(shard)
            assert gauge("llm_proxy_event_stream_pending", group=GROUP, shard=s) == 0
            assert gauge("llm_proxy_event_stream_lag", group=GROUP, shard=s) == 0
            assert gauge("llm_proxy_event_stream_consumers", group=GROUP, shard=s) == 1
        for shard, n in held.items():
            s = str(shard)
            assert gauge("llm_proxy_event_stream_lag", group="audit-copy", shard=s) == n
            assert gauge("llm_proxy_event_stream_length", shard=s) == n  # kept for audit-copy
        assert gauge("llm_proxy_event_stream_length", shard="0") == 0
        assert gauge("llm_proxy_event_stream_lag", group="audit-copy", shard="0") is None
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
        await redis.delete(*keys[1:])
