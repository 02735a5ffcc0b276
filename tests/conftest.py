"""Fixtures: real SQLite and Postgres stores, settings for each, and a clean environment."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from shared.config import Settings, declared_fields
from shared.crypto import Keyring, new_key
from shared.store import SqlStore, make_store
from tests.manage_server import ManagementServer
from tests.redis_topologies import Cluster, require_redis_binaries
from tests.services import (
    REDIS_HOST,
    REDIS_PORT,
    RedisProcess,
    create_database,
    drop_database,
    require,
)

pytest.register_assert_rewrite("tests.ledger_kit")  # its checks explain themselves

# Property tests judge what a parser returns, never how fast: no per-example deadline (a loaded
# machine stretches any one example) and no health check on slow data generation.
hypothesis_settings.register_profile(
    "llm-proxy", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("llm-proxy")

TABLES = (
    "request_events",
    "audit_events",
    "dead_letters",
    "tokens",
    "projects",
    "changes",
    "prices",
    "usage_rollups",
    "upstreams",
    "budget_buckets",
)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One migrated database per test session on the loopback Postgres."""
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    settings = Settings.from_env({"DB_DRIVER": "postgres", "DATABASE_URL": url})
    store = make_store(settings)

    async def migrate() -> None:
        await store.open()
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    yield url
    drop_database(url)


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


@pytest.fixture
def encryption_key() -> str:
    return new_key()


@pytest.fixture
def db_url() -> Iterator[str]:
    """A new empty database on the shared Postgres of its own, dropped afterwards."""
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_env(request: pytest.FixtureRequest, tmp_path: Path, encryption_key: str) -> dict[str, str]:
    """Environment for one store: a fresh SQLite file, or the session's Postgres, emptied."""
    if request.param == "sqlite":
        # an existing (empty) file, as the server leaves it: the CLI never creates one itself
        (tmp_path / "proxy.db").touch()
        return {"DATABASE_URL": str(tmp_path / "proxy.db"), "ENCRYPTION_KEY": encryption_key}
    url: str = request.getfixturevalue("pg_database")
    truncate(url)
    return {"DB_DRIVER": "postgres", "DATABASE_URL": url, "ENCRYPTION_KEY": encryption_key}


@pytest.fixture
def settings(db_env: dict[str, str]) -> Settings:
    return Settings.from_env(db_env)


@pytest.fixture
def keyring(encryption_key: str) -> Keyring:
    return Keyring.from_text(encryption_key)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SqlStore]:
    store = make_store(settings)
    await store.open()
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
async def pg_store(pg_database: str) -> AsyncIterator[SqlStore]:
    """The session's Postgres database, emptied: for tests about Postgres itself."""
    truncate(pg_database)
    store = make_store(Settings.from_env({"DB_DRIVER": "postgres", "DATABASE_URL": pg_database}))
    await store.open()
    yield store
    await store.close()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never inherit the developer's LLM-proxy settings, and run in a private directory."""
    for declared in declared_fields():
        monkeypatch.delenv(declared.metadata["env"], raising=False)
    monkeypatch.delenv("UPSTREAM_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def redis_env() -> dict[str, str]:
    """Settings pointing at the shared loopback Redis. Tests keep their keys apart with
    ``unique_prefix`` rather than flushing a database others may be using."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    return {"REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}"}


@pytest.fixture
def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, free to be stopped and restarted."""
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """One Redis Cluster (three masters, a replica each) shared by tests that do not disturb
    it; keys kept apart with ``unique_prefix``. Tests that fail a node over start their own."""
    require_redis_binaries()
    cluster = Cluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_env(redis_cluster: Cluster) -> dict[str, str]:
    return {"REDIS_MODE": "cluster", "REDIS_ADDR": redis_cluster.addr}


@pytest.fixture
def management_token() -> str:
    return "mgmt-" + secrets.token_urlsafe(24)


@pytest.fixture
def management_server(db_env: dict[str, str], management_token: str) -> Iterator[ManagementServer]:
    """The management API under uvicorn on a free loopback port, over this test's store."""
    settings = Settings.from_env({**db_env, "MANAGEMENT_TOKEN": management_token})
    with ManagementServer(settings) as server:
        yield server
