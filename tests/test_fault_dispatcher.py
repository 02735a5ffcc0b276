"""Fault suite: dispatchers whose path to Postgres fails silently (a black-holed interposer, as a
NAT that lost its flows) or is cut. The shared server at 127.0.0.1:5432 keeps running."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis

from dispatcher.health import HealthServer
from dispatcher.options import Options
from dispatcher.service import probe_dependencies
from shared.config import Settings
from shared.store import SqlStore, make_store
from shared.store.postgres import PostgresStore
from shared.streams import EVENT_FIELD
from tests.pipeline_kit import Owners, Running, options, pending, seed, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.fault

GROUP = "llm-proxy-dispatchers"
WRITE_TIMEOUT = 2.0


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


@pytest.fixture
def cut() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432).start()
    yield proxy  # type: ignore[misc]
    proxy.stop()


async def store_through(cut: TcpProxy, pg_database: str) -> SqlStore:
    """The dispatcher's store, as the dispatcher builds it, reaching Postgres through ``cut``."""
    url = pg_database.replace("127.0.0.1:5432", f"127.0.0.1:{cut.port}")
    settings = Settings.from_env(
        {
            "DB_DRIVER": "postgres",
            "DATABASE_URL": url,
            "DATABASE_CONNECT_TIMEOUT": "2s",
            "DISPATCHER_WRITE_TIMEOUT": f"{WRITE_TIMEOUT}s",
        }
    )
    store = make_store(settings, statement_timeout=settings.dispatcher_write_timeout)
    await store.open()
    return store


async def rows_of(store: SqlStore, owners: Owners) -> int:
    counts = await owners.counts(store)
    return sum(counts.values())


async def event_rows(url: str, project_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM request_events WHERE project_id = %s", (project_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def publish(redis: aioredis.Redis, key: str, owners: Owners, start: int, n: int) -> None:
    for i in range(start, start + n):
        await redis.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()})


async def test_black_holed_writes_are_detected_counted_and_recovered(
    redis: aioredis.Redis,
    key: str,
    pg_store: SqlStore,
    pg_database: str,
    cut: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    owners = await seed(pg_store, tokens=3, name=f"bh-{key}")
    store = await store_through(cut, pg_database)
    worker = Running(redis, store, options(key, "d1", batch_size=20, write_timeout=WRITE_TIMEOUT))
    health = HealthServer(
        worker.metrics,
        probe=lambda: probe_dependencies(store, redis, worker.metrics, WRITE_TIMEOUT),
        host="127.0.0.1",
        port=0,
    )
    await health.start()
    try:
        await publish(redis, key, owners, 0, 40)
        await wait_for(lambda: _is(rows_of(pg_store, owners), 40), what="40 rows", timeout=60)
        caplog.set_level(logging.INFO, logger="llm_proxy.dispatcher")
        cut.blackhole()
        await publish(redis, key, owners, 40, 100)

        async def failing() -> bool:
            return worker.counter("llm_proxy_dispatcher_write_failures_total") >= 1

        await wait_for(failing, what="a counted write failure", timeout=90)
        assert worker.metrics.registry.get_sample_value("llm_proxy_dispatcher_database_up") == 0
        assert any("database unavailable" in r.getMessage() for r in caplog.records)
        async with httpx.AsyncClient(timeout=60) as client:
            ready = await client.get(f"http://127.0.0.1:{health.port}/ready")
        assert ready.status_code == 503 and ready.json()["database"] == "down"
        cut.heal()
        await wait_for(lambda: _is(rows_of(pg_store, owners), 140), what="140 rows", timeout=120)
        await wait_for(lambda: _is(pending(redis, key, GROUP), 0), what="pending 0", timeout=60)
        assert await owners.counts(pg_store) == owners.expected
        assert worker.metrics.registry.get_sample_value("llm_proxy_dispatcher_database_up") == 1
    finally:
        await worker.stop()
        await health.close()
        await store.close()


@pytest.mark.parametrize("fault", ["refused", "black-holed"])
async def test_a_partitioned_dispatcher_releases_its_entries_to_a_healthy_peer(
    redis: aioredis.Redis,
    key: str,
    pg_store: SqlStore,
    pg_database: str,
    cut: TcpProxy,
    fault: str,
) -> None:
    owners = await seed(pg_store, tokens=4, name=f"part-{key}")
    store = await store_through(cut, pg_database)
    if fault == "refused":
        cut.stop()
    else:
        cut.blackhole()
    kw = {"batch_size": 25, "write_timeout": WRITE_TIMEOUT, "claim_idle": 1.0}
    partitioned = Running(redis, store, options(key, "cut-off", release_after=3.0, **kw))
    healthy = None
    try:
        n = 200
        await publish(redis, key, owners, 0, n)

        async def hoarded() -> bool:
            rows = await redis.xpending_range(key, GROUP, "-", "+", n, consumername="cut-off")
            return len(rows) > 0

        await wait_for(hoarded, what="the cut-off dispatcher to take entries", timeout=60)
        healthy = Running(redis, pg_store, options(key, "healthy", **kw))
        await wait_for(lambda: _is(rows_of(pg_store, owners), n), what=f"{n} rows", timeout=120)
        await wait_for(lambda: _is(pending(redis, key, GROUP), 0), what="pending 0", timeout=60)
        if fault == "refused":
            cut.start()
        else:
            cut.heal()
        await publish(redis, key, owners, n, 50)  # both may take these; each written once
        total = n + 50
        await wait_for(lambda: _is(rows_of(pg_store, owners), total), what="all rows", timeout=120)
        await wait_for(lambda: _is(pending(redis, key, GROUP), 0), what="pending 0", timeout=60)
        assert await owners.counts(pg_store) == owners.expected
        assert await event_rows(pg_database, owners.project_id) == total
    finally:
        await partitioned.stop()
        if healthy is not None:
            await healthy.stop()
        await store.close()


async def _is(value: object, expected: int) -> bool:
    got = await value  # type: ignore[misc]
    assert got <= expected, f"{got} for {expected}: something was written twice"
    return bool(got == expected)


async def test_dispatcher_connections_carry_their_deadlines(pg_database: str) -> None:
    """What the dispatcher's service builds from the settings reaches libpq and the server."""
    settings = Settings.from_env(
        {
            "DB_DRIVER": "postgres",
            "DATABASE_URL": pg_database,
            "DISPATCHER_WRITE_TIMEOUT": "7s",
            "DISPATCHER_RELEASE_AFTER": "2m",
            "DATABASE_TCP_USER_TIMEOUT": "20s",
        }
    )
    assert Options.from_settings(settings).write_timeout == 7.0
    assert Options.from_settings(settings).release_after == 120.0
    store = make_store(settings, statement_timeout=settings.dispatcher_write_timeout)
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        async with store.pool.connection() as conn:
            cur = await conn.execute("SHOW statement_timeout")
            assert await cur.fetchone() == {"statement_timeout": "7s"}
            params = conn.info.get_parameters()
        assert params["tcp_user_timeout"] == "20000"
        assert params["keepalives_idle"] == "30" and params["connect_timeout"] == "10"
    finally:
        await store.close()
