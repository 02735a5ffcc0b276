"""DATABASE_READ_URL on a real streaming standby: the lag-tolerant management reads come from
it (a paused standby shows the old figures), while writes and the reads that must see them
stay on the primary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from shared.config import ConfigError, Settings
from shared.crypto import load_keyring
from shared.management import inputs as i
from shared.management.service import Management
from shared.store import SqlStore, make_store
from tests.pipeline_kit import Owners, seed, wait_for
from tests.postgres_standby import Standby, require_postgres_binaries
from tests.services import free_port
from tests.test_cli import ok_json

KEY = "k" * 43 + "="


@pytest.fixture(scope="module")
def standby() -> Iterator[Standby]:
    require_postgres_binaries()
    running = Standby().start()
    yield running
    running.stop()


def settings_for(standby: Standby) -> Settings:
    return Settings.from_env(
        {
            "DB_DRIVER": "postgres",
            "DATABASE_URL": standby.primary_url,
            "DATABASE_READ_URL": standby.standby_url,
            "ENCRYPTION_KEY": KEY,
        }
    )


@pytest.fixture
async def store(standby: Standby) -> AsyncIterator[SqlStore]:
    made = make_store(settings_for(standby))
    await made.open(wait=True)
    await made.migrate()
    yield made
    await made.close()


async def _true(value: bool) -> bool:
    return value


def management(store: SqlStore, standby: Standby) -> Management:
    return Management(store=store, keyring=load_keyring(settings_for(standby)), actor="test")


async def record(store: SqlStore, owners: Owners, n: int, start: int) -> None:
    events = [owners.event(i, model="gpt-4o-mini") for i in range(start, start + n)]
    assert await store.record_events(events) == n


async def test_lag_tolerant_reads_come_from_the_replica(store: SqlStore, standby: Standby) -> None:
    assert store.lagging() is not store
    mgmt = management(store, standby)
    owners = await seed(store, tokens=1, name="replica-reads")
    token_id = owners.tokens[0].id
    await record(store, owners, 5, 0)
    await wait_for(lambda: _true(standby.caught_up()), timeout=60, what="the standby")

    async def usage() -> int:
        report = await mgmt.usage_report(i.UsageQuery(project_id=owners.project_id))
        return int(report["total"]["requests"])

    async def events_page() -> int:
        page = await mgmt.token_usage(i.TokenUsage(token_id=token_id, limit=100))
        return len(page["events"])

    assert await usage() == 5 and await events_page() == 5

    await asyncio.to_thread(standby.pause_replay)
    try:
        await record(store, owners, 7, 5)
        # the primary has 12; the replica, paused, still 5: these reads used the replica
        primary = await store.list_rollups(project_id=owners.project_id)
        assert sum(r.totals.requests for r in primary) == 12
        assert await usage() == 5
        assert await events_page() == 5
        tail = await mgmt.tail_events(i.TailEvents(project_id=owners.project_id, limit=100))
        assert len(tail["data"]) == 5
        # ... while a read that must see its own writes does, and writes go to the primary
        shown = await mgmt.show_token(i.TokenRef(token_id=token_id))
        assert shown["request_count"] == 12
        made = await mgmt.generate_token(i.GenerateToken(project_id=owners.project_id))
        assert (await mgmt.show_token(i.TokenRef(token_id=made["id"])))["id"] == made["id"]
    finally:
        await asyncio.to_thread(standby.resume_replay)
    await wait_for(lambda: _true(standby.caught_up()), timeout=60, what="the standby")
    assert await usage() == 12 and await events_page() == 12
    audit = await mgmt.audit_page(i.AuditQuery(action="token.generate"))
    assert [row["target_id"] for row in audit["data"]] == [made["id"]]


def test_the_read_url_must_be_postgres() -> None:
    with pytest.raises(ConfigError, match="DATABASE_READ_URL must be a postgres:// URL"):
        Settings.from_env({"DATABASE_READ_URL": "postgres://replica/db"})  # on SQLite
    with pytest.raises(ConfigError, match="DATABASE_READ_URL must be a postgres:// URL"):
        Settings.from_env(
            {
                "DB_DRIVER": "postgres",
                "DATABASE_URL": "postgres://primary/db",
                "DATABASE_READ_URL": "replica.db",
            }
        )


async def test_an_unreachable_replica_leaves_the_reads_to_the_primary(
    standby: Standby, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    settings = settings_for(standby).replace(database_read_url=nowhere)
    made = make_store(settings)
    await made.open(wait=True)
    try:
        mgmt = management(made, standby)
        owners = await seed(made, tokens=1, name="replica-down")
        await record(made, owners, 4, 0)
        report = await mgmt.usage_report(i.UsageQuery(project_id=owners.project_id))
        assert report["total"]["requests"] == 4  # served by the primary
        assert "read replica (DATABASE_READ_URL) gave no connection" in caplog.text
        page = await mgmt.token_usage(i.TokenUsage(token_id=owners.tokens[0].id))
        assert len(page["events"]) == 4  # and the next reads go straight to the primary
    finally:
        await made.close()


def test_the_cli_reports_usage_from_the_replica(standby: Standby) -> None:
    """`llm-proxy manage usage` with DATABASE_READ_URL, as an operator runs it."""
    env = {
        "DB_DRIVER": "postgres",
        "DATABASE_URL": standby.primary_url,
        "DATABASE_READ_URL": standby.standby_url,
        "ENCRYPTION_KEY": KEY,
    }

    async def write(n: int, start: int, owners: Owners | None = None) -> Owners:
        made = make_store(Settings.from_env(env))
        await made.open(wait=True)
        try:
            await made.migrate()
            owners = owners or await seed(made, tokens=1, name="replica-cli")
            await record(made, owners, n, start)
        finally:
            await made.close()
        return owners

    owners = asyncio.run(write(3, 0))
    asyncio.run(wait_for(lambda: _true(standby.caught_up()), timeout=60, what="the standby"))
    standby.pause_replay()
    try:
        asyncio.run(write(2, 3, owners))
        usage = ok_json(env, "manage", "usage", "--project-id", owners.project_id)
        assert usage["total"]["requests"] == 3  # the replica's figure
        token = ok_json(env, "manage", "token", "show", owners.tokens[0].id)
        assert token["request_count"] == 5  # the primary's
    finally:
        standby.resume_replay()
