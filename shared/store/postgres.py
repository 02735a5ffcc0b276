"""The production store: Postgres through a psycopg 3 async connection pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shared.errors import Unavailable
from shared.store.base import Row, SqlStore, Tx

# Any fixed 64-bit number: the advisory lock that serialises concurrent `llm-proxy migrate` runs.
MIGRATION_LOCK_KEY = 0x6C6C6D70726F7879  # "llmproxy"


class _PgTx:
    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self.conn.execute(sql, params or None)
        return cur.rowcount

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = await self.conn.execute(sql, params or None)
        return await cur.fetchall()

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cur = await self.conn.execute(sql, params or None)
        return await cur.fetchone()


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("uuid", TextLoader)  # ids are plain strings in our models
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.commit()


class PostgresStore(SqlStore):
    latest_sql = "GREATEST"
    dialect = "postgres"
    migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
        "name text NOT NULL, applied_at timestamptz NOT NULL)"
    )

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        min_idle: int = 5,
        max_lifetime: float = 3600.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.pool = AsyncConnectionPool(
            url,
            min_size=min(min_idle, pool_size),
            max_size=pool_size,
            max_lifetime=max_lifetime,
            timeout=timeout,
            open=False,
            configure=_configure,
            kwargs={"row_factory": dict_row},
            name="llm-proxy",
        )

    def valid_id(self, value: str) -> bool:
        try:
            uuid.UUID(value)
        except ValueError:
            return False
        return True

    async def open(self, *, wait: bool = False) -> None:
        """Open the pool; with ``wait``, fail fast with ``Unavailable`` if Postgres is unreachable
        (the CLI); without, keep retrying in the background (servers, which report it on /ready)."""
        try:
            await self.pool.open(wait=wait, timeout=self.timeout)
        except PoolTimeout:
            await self.pool.close()
            info = psycopg.conninfo.conninfo_to_dict(self.url)
            where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
            raise Unavailable(f"cannot connect to the database at {where}") from None

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        async with self.pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    async def schema_version(self) -> int:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone("SELECT to_regclass('schema_migrations') IS NOT NULL AS ok")
            if not row or not row["ok"]:
                return 0
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0

    async def lock_for_migration(self, tx: Tx) -> None:
        # Held until commit: a second migrator waits here, then finds nothing left to do.
        await tx.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
