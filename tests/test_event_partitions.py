"""request_events partitioned by time on a real Postgres: a new database, the conversion of a
populated pre-0014 one, redeliveries, strays in the default partition, retention by dropping
partitions, and dispatchers keeping partitions ahead."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis.asyncio as aioredis

from dispatcher.consumer import Dispatcher
from shared.clock import utcnow
from shared.config import Settings
from shared.events import ACCEPTED, RequestEvent
from shared.store import SqlStore, make_store, migrations
from shared.store.partitions import (
    DEFAULT,
    LEGACY,
    Partition,
    PartitionPolicy,
    first_bound,
    list_partitions,
    missing,
    partition_name,
    wanted,
)
from shared.streams import EVENT_FIELD
from tests.pipeline_kit import Owners, options, seed, wait_for
from tests.services import REDIS_HOST, REDIS_PORT, create_database, drop_database, require

DAY = timedelta(days=1)


@pytest.fixture
def database() -> Iterator[str]:
    """A database of this test's own: partitions outlive a TRUNCATE."""
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    yield url
    drop_database(url)


def _store(url: str, ahead: int = 3) -> SqlStore:
    env = {"DB_DRIVER": "postgres", "DATABASE_URL": url}
    env["REQUEST_EVENT_PARTITIONS_AHEAD"] = str(ahead)
    return make_store(Settings.from_env(env))


@pytest.fixture
async def store(database: str) -> AsyncIterator[SqlStore]:
    store = _store(database)
    await store.open(wait=True)
    await store.migrate()
    yield store
    await store.close()


async def _names(store: SqlStore) -> list[str]:
    async with store.transaction(readonly=True) as tx:
        return [p.name for p in await list_partitions(tx)]


async def _where(store: SqlStore, event_id: str) -> list[str]:
    """The partitions holding rows of ``event_id``."""
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetchall(
            "SELECT tableoid::regclass::text AS part FROM request_events WHERE event_id = %s",
            (event_id,),
        )
    return [r["part"] for r in rows]


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def test_a_new_database_has_partitions_from_yesterday_to_the_days_ahead(
    store: SqlStore,
) -> None:
    today = _day(utcnow())
    days = [today + i * DAY for i in range(-1, 4)]
    assert await _names(store) == [DEFAULT, *(partition_name(d) for d in days)]
    assert await store.migrate() == []  # a second run: nothing to apply, nothing to create
    assert len(await _names(store)) == 6


async def test_a_redelivered_event_is_a_harmless_duplicate(store: SqlStore) -> None:
    owners = await seed(store)
    accepted = owners.event(0, phase=ACCEPTED, status=0, prompt_tokens=0, completion_tokens=0)
    final = RequestEvent(**{**_fields(accepted), "phase": "final", "status": 200})
    plain = [owners.event(i) for i in range(1, 6)]
    assert len(await store.record_batch([accepted, *plain])) == 6
    # the same batch again (a dispatcher died before XACK), then the final, then it again
    assert await store.record_batch([accepted, *plain]) == []
    written = await store.record_batch([final])
    assert [e.event_id for e in written] == [final.event_id]
    assert written.completed == {final.event_id}  # type: ignore[attr-defined]
    assert await store.record_batch([final, *plain]) == []
    assert await store.count_events() == 6
    assert await owners.counts(store) == owners.expected  # each request counted once
    rows = await store.list_events(limit=10)
    assert {e.event_id: e.status for e in rows}[final.event_id] == 200
    assert await _where(store, final.event_id) == [partition_name(_day(utcnow()))]


def _fields(event: RequestEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__slots__}


async def test_a_row_outside_every_partition_waits_in_the_default_one(store: SqlStore) -> None:
    owners = await seed(store)
    later = utcnow() + 30 * DAY
    stray = owners.event(0, ts=later.timestamp())
    assert await store.record_events([stray]) == 1
    assert await _where(store, stray.event_id) == [DEFAULT]
    assert await store.record_events([stray]) == 0  # a duplicate there too
    created = await store.ensure_partitions(later)
    assert partition_name(_day(later)) in created
    assert await _where(store, stray.event_id) == [partition_name(_day(later))]
    assert await store.record_events([stray]) == 0
    assert await store.count_events() == 1


async def test_retention_drops_whole_partitions_and_deletes_only_strays(store: SqlStore) -> None:
    owners = await seed(store)
    now = utcnow()
    cutoff = now - 7 * DAY
    await store.ensure_partitions(now - 30 * DAY)  # days -31 .. -27 exist, as if run then
    await store.ensure_partitions(cutoff)  # and days -8 .. -4 (-8 wholly before the cutoff)
    old = [owners.event(i, ts=(now - 29 * DAY).timestamp()) for i in range(4)]
    stray = owners.event(9, ts=(now - 100 * DAY).timestamp())  # before every partition
    # older than the cutoff, in the partition the cutoff falls in
    straddling = owners.event(10, ts=(cutoff - (cutoff - _day(cutoff)) / 2).timestamp())
    recent = [owners.event(i, ts=now.timestamp()) for i in range(3)]
    await store.record_events([*old, stray, straddling, *recent])
    assert await _where(store, stray.event_id) == [DEFAULT]

    pruned = await store.prune_events(cutoff)

    expired = [partition_name(_day(now - 30 * DAY) + i * DAY) for i in range(-1, 4)]
    expired.append(partition_name(_day(cutoff) - DAY))
    assert sorted(pruned.dropped) == sorted(expired)
    assert pruned.deleted == 1  # the stray; every other old row went with its partition
    names = await _names(store)
    assert not set(expired) & set(names)
    assert partition_name(_day(cutoff)) in names  # straddles the cutoff: kept until it passes
    left = {e.event_id for e in await store.list_events(limit=20)}
    assert left == {straddling.event_id, *(e.event_id for e in recent)}
    assert await owners.counts(store) == owners.expected  # aggregates are history, kept


def _apply_all_but(url: str, version: int) -> None:
    """The schema as a release before partitioning left it, with the migrations that came
    after partitioning too (they touch other tables, and today's store, which seeds the
    owners, writes their columns): every migration but ``version``."""
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL)"
        )
        for migration in migrations.load("postgres"):
            if migration.version == version:
                continue
            for statement in migration.statements():
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, now())",
                (migration.version, migration.name),
            )


async def _populated_pre_0014(url: str) -> tuple[SqlStore, Owners, list[RequestEvent]]:
    _apply_all_but(url, 14)
    store = _store(url)
    await store.open(wait=True)
    owners = await seed(store)
    now = utcnow()
    events = [owners.event(i, ts=(now - (i % 40) * DAY).timestamp()) for i in range(200)]
    accepted = owners.event(500, phase=ACCEPTED, status=0, prompt_tokens=0, completion_tokens=0)
    events.append(accepted)
    with psycopg.connect(url) as conn:  # rows as the old dispatcher wrote them
        for e in events:
            conn.execute(
                "INSERT INTO request_events (event_id, request_id, ts, project_id, token_id, "
                "method, path, status, phase) VALUES (%s, %s, to_timestamp(%s), %s, %s, %s, "
                "%s, %s, %s)",
                (
                    e.event_id,
                    e.request_id,
                    e.ts,
                    e.project_id,
                    e.token_id,
                    e.method,
                    e.path,
                    e.status,
                    e.phase,
                ),
            )
    return store, owners, events


async def test_a_populated_database_is_converted_keeping_every_row(database: str) -> None:
    store, owners, events = await _populated_pre_0014(database)
    try:
        assert await store.migrate() == [14]
        names = await _names(store)
        assert names[:2] == [DEFAULT, LEGACY]
        assert await store.count_events() == len(events)
        assert set(await _where(store, events[0].event_id)) == {LEGACY}

        # dedupe still holds for rows written before the conversion
        assert await store.record_events(events[:50]) == 0
        accepted = events[-1]
        final = RequestEvent(**{**_fields(accepted), "phase": "final", "status": 200})
        written = await store.record_batch([final])
        assert written.completed == {final.event_id}  # type: ignore[attr-defined]
        assert await _where(store, final.event_id) == [LEGACY]

        # rows past the old table's bound land in the new partitions
        async with store.transaction(readonly=True) as tx:
            legacy = (await list_partitions(tx))[1]
        assert legacy.lower is None and legacy.upper is not None
        assert legacy.upper >= utcnow() + DAY  # the writes during the conversion fitted
        later = owners.event(0, ts=(legacy.upper + timedelta(hours=1)).timestamp())
        assert await store.record_events([later]) == 1
        assert await _where(store, later.event_id) == [partition_name(legacy.upper)]
        assert await store.count_events() == len(events) + 1
    finally:
        await store.close()


async def test_migrators_at_once_convert_a_populated_database_once(database: str) -> None:
    store, _, events = await _populated_pre_0014(database)
    others = [_store(database) for _ in range(2)]
    try:
        for other in others:
            await other.open(wait=True)
        applied = await asyncio.gather(store.migrate(), *(o.migrate() for o in others))
        assert sorted(applied) == [[], [], [14]]
        assert await store.count_events() == len(events)
        assert (await _names(store))[:2] == [DEFAULT, LEGACY]
    finally:
        for other in others:
            await other.close()
        await store.close()


async def test_the_conversion_transaction_reads_no_row_of_the_old_table(database: str) -> None:
    store, _, _ = await _populated_pre_0014(database)
    try:
        await store.prepare_step("partition_request_events")  # the scans, writes going on
        async with store.transaction() as tx:
            await store.apply_step(tx, "partition_request_events")
            row = await tx.fetchone(
                "SELECT pg_stat_get_xact_numscans(%s::regclass) AS scans, "
                "pg_stat_get_xact_tuples_fetched(%s::regclass) AS fetched",
                (LEGACY, LEGACY),
            )
            assert row == {"scans": 0, "fetched": 0}, "the swap under the lock scanned the table"
            await tx.execute("INSERT INTO schema_migrations VALUES (14, 'partition_events', now())")
        assert await store.migrate() == []
        assert await store.count_events() == 201
    finally:
        await store.close()


async def test_a_dispatcher_creates_the_partitions_missing_ahead(database: str) -> None:
    require("Redis", REDIS_HOST, REDIS_PORT)
    few = _store(database, ahead=1)
    await few.open(wait=True)
    await few.migrate()
    await few.close()
    store = _store(database, ahead=3)
    await store.open(wait=True)
    redis = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    key = f"test:{{parts-{uuid.uuid4().hex[:8]}}}:events"
    owners = await seed(store)
    far = _day(utcnow()) + 3 * DAY
    dispatcher = Dispatcher(redis, store, options(key), keep_partitions=True)
    task = asyncio.create_task(dispatcher.run())
    try:
        await wait_for(
            lambda: _has(store, partition_name(far)), timeout=60, what="the partition ahead"
        )
        event = owners.event(0, ts=(far + timedelta(hours=2)).timestamp())
        await redis.xadd(key, {EVENT_FIELD: event.to_bytes()})
        await wait_for(lambda: _in(store, event.event_id), timeout=60, what="the event's row")
        assert await _where(store, event.event_id) == [partition_name(far)]
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
        await redis.delete(key)
        await redis.aclose()
        await store.close()


async def _has(store: SqlStore, name: str) -> bool:
    return name in await _names(store)


async def _in(store: SqlStore, event_id: str) -> bool:
    return bool(await _where(store, event_id))


def test_partition_names_and_spans_are_utc() -> None:
    now = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    months = wanted(now, PartitionPolicy("month", 1))
    assert [lo.date().isoformat() for lo, _ in months] == ["2026-11-01", "2026-12-01", "2027-01-01"]
    weeks = wanted(now, PartitionPolicy("week", 0))
    assert [lo.weekday() for lo, _ in weeks] == [0, 0]
    assert first_bound(now, "day") == datetime(2027, 1, 2, tzinfo=UTC)
    assert first_bound(now, "month") == datetime(2027, 2, 1, tzinfo=UTC)
    # after a span change, only the gaps are made
    held = [Partition("m", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))]
    days = wanted(now, PartitionPolicy("day", 2))
    assert [lo.day for lo, _ in missing(days, held)] == [1, 2]
