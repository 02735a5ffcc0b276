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

from shared.clock import utcnow
from shared.errors import Unavailable
from shared.events import RequestEvent
from shared.store.base import EVENT_COLUMNS, Row, SqlStore, Tx, usage_by_owner
from shared.store.migrations import load

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


# One statement per batch: each column travels as one array (see docs/decisions.md, "Batch
# insert": measured against COPY into a temporary table). Only the rows inserted come back.
_INSERT_EVENTS = (
    f"INSERT INTO request_events ({EVENT_COLUMNS}) "
    "SELECT e, r, to_timestamp(t), p, k, m, pa, s, mo, d, u, f, rb, sb, pt, ct, tt, c, st, er, ip "
    "FROM unnest(%s::uuid[], %s::text[], %s::float8[], %s::uuid[], %s::uuid[], %s::text[], "
    "%s::text[], %s::int4[], %s::text[], %s::float8[], %s::float8[], %s::float8[], %s::int8[], "
    "%s::int8[], %s::int4[], %s::int4[], %s::int4[], %s::text[], %s::bool[], %s::text[], "
    "%s::text[]) AS u(e, r, t, p, k, m, pa, s, mo, d, u, f, rb, sb, pt, ct, tt, c, st, er, ip) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


def event_columns(events: Sequence[RequestEvent]) -> list[list[Any]]:
    """The batch as one list per column, in EVENT_COLUMNS order."""
    return [
        [e.event_id for e in events],
        [e.request_id for e in events],
        [e.ts for e in events],
        [e.project_id or None for e in events],
        [e.token_id or None for e in events],
        [e.method for e in events],
        [e.path for e in events],
        [e.status for e in events],
        [e.model for e in events],
        [e.duration_ms for e in events],
        [e.upstream_ms for e in events],
        [e.ttfb_ms for e in events],
        [e.request_bytes for e in events],
        [e.response_bytes for e in events],
        [e.prompt_tokens for e in events],
        [e.completion_tokens for e in events],
        [e.total_tokens for e in events],
        [e.cache_status for e in events],
        [e.stream for e in events],
        [e.error for e in events],
        [e.client_ip for e in events],
    ]


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("uuid", TextLoader)  # ids are plain strings in our models
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.commit()


class PostgresStore(SqlStore):
    latest_sql = "GREATEST"
    uuid_ids = True

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

    async def insert_events(self, tx: Tx, events: Sequence[RequestEvent]) -> list[RequestEvent]:
        conn = tx.conn if isinstance(tx, _PgTx) else None
        if conn is None or not events:
            return await super().insert_events(tx, events)
        cur = await conn.execute(_INSERT_EVENTS, event_columns(events))
        # Ids come back in Postgres's canonical text form; callers validate ids to that form.
        inserted = {row["event_id"] for row in await cur.fetchall()}
        seen: set[str] = set()
        out = []
        for event in events:  # a batch may carry one event twice; count it once
            if event.event_id in inserted and event.event_id not in seen:
                seen.add(event.event_id)
                out.append(event)
        return out

    async def apply_usage(self, tx: Tx, inserted: Sequence[RequestEvent]) -> None:
        conn = tx.conn if isinstance(tx, _PgTx) else None
        if conn is None:
            return await super().apply_usage(tx, inserted)
        tokens, projects = usage_by_owner(inserted)
        for table, usage in (("tokens", tokens), ("projects", projects)):
            if not usage:
                continue
            ids = sorted(usage)
            # Lock the rows in id order first: two dispatchers updating the same hot tokens in
            # different orders would otherwise deadlock.
            await conn.execute(
                f"SELECT id FROM {table} WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE", (ids,)
            )
            rows = [usage[i] for i in ids]
            await conn.execute(
                f"UPDATE {table} AS o SET request_count = o.request_count + u.requests, "
                "cache_hit_count = o.cache_hit_count + u.hits, "
                "prompt_tokens = o.prompt_tokens + u.prompt, "
                "completion_tokens = o.completion_tokens + u.completion, "
                "last_used_at = GREATEST(o.last_used_at, u.last_used) "
                "FROM unnest(%s::uuid[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], "
                "%s::timestamptz[]) AS u(id, requests, hits, prompt, completion, last_used) "
                "WHERE o.id = u.id",
                (
                    ids,
                    [u.requests for u in rows],
                    [u.cache_hits for u in rows],
                    [u.prompt_tokens for u in rows],
                    [u.completion_tokens for u in rows],
                    [u.last_used for u in rows],
                ),
            )
        return None

    async def schema_version(self) -> int:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone("SELECT to_regclass('schema_migrations') IS NOT NULL AS ok")
            if not row or not row["ok"]:
                return 0
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        async with self.transaction() as tx:
            # Held until commit: a second migrator waits here, then finds nothing left to do.
            await tx.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL)"
            )
            done = {
                r["version"] for r in await tx.fetchall("SELECT version FROM schema_migrations")
            }
            for migration in load("postgres"):
                if migration.version in done:
                    continue
                for statement in migration.statements():
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, utcnow()),
                )
                applied.append(migration.version)
        return applied
