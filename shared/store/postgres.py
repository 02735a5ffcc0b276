"""The production store: Postgres through a psycopg 3 async connection pool."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
import psycopg
import psycopg.conninfo
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shared.clock import utcnow
from shared.errors import Unavailable
from shared.events import RequestEvent
from shared.store import partitions
from shared.store.base import (
    EVENT_COLUMNS,
    Inserted,
    Row,
    SqlStore,
    Tx,
    one_per_request,
    usage_by_owner,
)
from shared.store.partitions import (
    DEFAULT,
    LEGACY,
    MIGRATION_LOCK_KEY,
    PARTITION_LOCK_KEY,
    PartitionPolicy,
    Pruned,
)

#: How long a read waits for a replica connection before the primary serves it, and how long
#: the primary then keeps serving the replica's reads before it is tried again.
REPLICA_WAIT = 2.0
REPLICA_REST = 30.0

log = logging.getLogger("llm_proxy.store")

_PARTITION_STEP = "partition_request_events"


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


# The whole batch travels as ONE JSON parameter that Postgres unpacks with json_to_recordset:
# one statement, no per-connection state, and the least Python work per event (orjson does the
# encoding). Measured against `unnest` of 21 arrays and COPY into a temporary table: see
# docs/decisions.md, "Batch insert". Only the rows inserted come back.
_INSERT_EVENTS = (
    f"INSERT INTO request_events ({EVENT_COLUMNS}) "
    "SELECT event_id, request_id, to_timestamp(ts), NULLIF(project_id, '')::uuid, "
    "NULLIF(token_id, '')::uuid, method, path, status, model, duration_ms, upstream_ms, "
    "ttfb_ms, request_bytes, response_bytes, prompt_tokens, completion_tokens, total_tokens, "
    "cache_status, stream, error, client_ip, usage_source, phase, trace_id, span_id, "
    "cache_creation_tokens, cache_read_tokens, upstream, attempts, cached_tokens, "
    "reasoning_tokens, NULLIF(cost_picousd, -1) "
    "FROM json_to_recordset(%s::json) AS x(event_id uuid, request_id text, ts float8, "
    "project_id text, token_id text, method text, path text, status int4, model text, "
    "duration_ms float8, upstream_ms float8, ttfb_ms float8, request_bytes int8, "
    "response_bytes int8, prompt_tokens int8, completion_tokens int8, total_tokens int8, "
    "cache_status text, stream bool, error text, client_ip text, usage_source text, phase text, "
    "trace_id text, span_id text, cache_creation_tokens int8, cache_read_tokens int8, "
    "upstream text, attempts int4, cached_tokens int8, reasoning_tokens int8, "
    "cost_picousd int8) "
    # A final replaces its accepted row (and nothing else: a repeat changes nothing). The key
    # holds ts, the partition column: a redelivery carries the same ts, so meets its row.
    "ON CONFLICT (event_id, ts) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in (c.strip() for c in EVENT_COLUMNS.split(",")[1:]))
    + ", replaced_accepted = true"
    " WHERE request_events.phase = 'accepted' AND EXCLUDED.phase = 'final' "
    # RETURNING cannot read xmax on a partitioned table: the row says whether it was replaced
    "RETURNING event_id, NOT replaced_accepted AS fresh"
)

_APPLY_USAGE = (
    "UPDATE {table} AS o SET request_count = o.request_count + u.requests, "
    "cache_hit_count = o.cache_hit_count + u.cache_hits, "
    "prompt_tokens = o.prompt_tokens + u.prompt_tokens, "
    "completion_tokens = o.completion_tokens + u.completion_tokens, "
    "last_used_at = GREATEST(o.last_used_at, u.last_used) "
    "FROM json_to_recordset(%s::json) AS u(id uuid, requests int8, cache_hits int8, "
    "prompt_tokens int8, completion_tokens int8, last_used timestamptz) "
    "WHERE o.id = u.id"
)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("uuid", TextLoader)  # ids are plain strings in our models
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.commit()


def connection_options(
    connect_timeout: float, tcp_user_timeout: float, statement_timeout: float | None
) -> dict[str, Any]:
    """libpq options that bound how long a dead or silent server can hold a connection: the
    connect, the kernel's wait for acknowledgements, keepalive probes of idle connections (the
    OS default would wait two hours), and optionally each statement on the server."""
    options: dict[str, Any] = {
        "connect_timeout": max(1, round(connect_timeout)),  # libpq: whole seconds, 1 minimum
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if tcp_user_timeout > 0:
        options["tcp_user_timeout"] = int(tcp_user_timeout * 1000)
    if statement_timeout:
        options["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    return options


class PostgresStore(SqlStore):
    latest_sql = "GREATEST"
    dialect = "postgres"
    migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
        "name text NOT NULL, applied_at timestamptz NOT NULL)"
    )
    uuid_ids = True

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        min_idle: int = 5,
        max_lifetime: float = 3600.0,
        timeout: float = 10.0,
        connect_timeout: float = 10.0,
        tcp_user_timeout: float = 30.0,
        statement_timeout: float | None = None,
        read_url: str = "",
        partitioning: PartitionPolicy | None = None,
    ) -> None:
        self.url = url
        self.partitioning = partitioning or PartitionPolicy()
        self._connect_options = connection_options(connect_timeout, tcp_user_timeout, None)
        self.timeout = timeout
        self._replica: PostgresStore | None = None
        #: on a replica's store: the primary, which serves its reads while it is unreachable
        self._primary: PostgresStore | None = None
        self._replica_down_until = 0.0
        if read_url:
            self._replica = PostgresStore(
                read_url,
                pool_size=pool_size,
                min_idle=min_idle,
                max_lifetime=max_lifetime,
                timeout=timeout,
                connect_timeout=connect_timeout,
                tcp_user_timeout=tcp_user_timeout,
                statement_timeout=statement_timeout,
            )
            self._replica._primary = self
        self.pool = AsyncConnectionPool(
            url,
            min_size=min(min_idle, pool_size),
            max_size=pool_size,
            max_lifetime=max_lifetime,
            timeout=timeout,
            open=False,
            configure=_configure,
            kwargs={
                "row_factory": dict_row,
                **connection_options(connect_timeout, tcp_user_timeout, statement_timeout),
            },
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
        if self._replica is not None:
            await self._replica.close()
        await self.pool.close()

    def lagging(self) -> SqlStore:
        # A process that never reads lag-tolerant data (the dispatcher, a proxy serving no
        # management) never opens a connection to the replica.
        return self._replica if self._replica is not None else self

    def lost_connection(self, exc: BaseException) -> bool:
        # PoolTimeout is an OperationalError too, but means no connection at all: no retry
        return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, PoolTimeout)

    async def drop_broken_connections(self) -> None:
        await self.pool.check()

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        if self._primary is not None:  # a replica
            async with self._replica_transaction(self._primary, readonly) as tx:
                yield tx
            return
        async with self.pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    @asynccontextmanager
    async def _replica_transaction(
        self, primary: PostgresStore, readonly: bool
    ) -> AsyncIterator[Tx]:
        """On the replica; while it cannot give a connection (down, or every connection busy
        for REPLICA_WAIT), on the primary, which then serves these reads for REPLICA_REST
        before the replica is tried again."""
        conn = None
        if time.monotonic() >= self._replica_down_until:
            if self.pool.closed:
                await self.pool.open()  # idempotent under its lock; connects in the background
            try:
                conn = await self.pool.getconn(timeout=REPLICA_WAIT)
            except PoolTimeout:
                self._replica_down_until = time.monotonic() + REPLICA_REST
                log.warning(
                    "the read replica (DATABASE_READ_URL) gave no connection in %.0fs; reading "
                    "from DATABASE_URL for %.0fs",
                    REPLICA_WAIT,
                    REPLICA_REST,
                )
        if conn is None:
            async with primary.transaction(readonly=readonly) as tx:
                yield tx
            return
        try:
            async with conn.transaction():
                yield _PgTx(conn)
        finally:
            await self.pool.putconn(conn)

    async def insert_events(self, tx: Tx, events: Sequence[RequestEvent]) -> list[RequestEvent]:
        conn = tx.conn if isinstance(tx, _PgTx) else None
        if conn is None or not events:
            return await super().insert_events(tx, events)
        # One row per event_id in the statement: ON CONFLICT DO UPDATE may not touch a row twice.
        events = one_per_request(events)
        cur = await conn.execute(_INSERT_EVENTS, (orjson.dumps(events).decode(),))
        # Ids come back in Postgres's canonical text form; writers normalise ids to it first.
        written = {str(row["event_id"]): row["fresh"] for row in await cur.fetchall()}
        out = Inserted()
        for event in events:
            fresh = written.get(event.event_id)
            if fresh is not None:
                out.append(event)
                if not fresh:
                    out.completed.add(event.event_id)
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
            rows = [
                {
                    "id": i,
                    "requests": usage[i].requests,
                    "cache_hits": usage[i].cache_hits,
                    "prompt_tokens": usage[i].prompt_tokens,
                    "completion_tokens": usage[i].completion_tokens,
                    "last_used": usage[i].last_used,
                }
                for i in ids
            ]
            await conn.execute(_APPLY_USAGE.format(table=table), (orjson.dumps(rows).decode(),))
        return None

    async def schema_version(self) -> int:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone("SELECT to_regclass('schema_migrations') IS NOT NULL AS ok")
            if not row or not row["ok"]:
                return 0
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0

    async def lock_owner(self, tx: Tx, owner_id: str) -> None:
        # Held until commit: one owner's reservations are decided one at a time.
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (owner_id,))

    async def migrate(self) -> list[int]:
        """The migrations, then the partitions ahead."""
        applied = await super().migrate()
        await self.ensure_partitions()
        return applied

    async def prepare_step(self, name: str) -> None:
        if name != _PARTITION_STEP:
            return await super().prepare_step(name)
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, row_factory=dict_row, **self._connect_options
        )
        async with conn:
            await partitions.prepare(_PgTx(conn), self.partitioning, utcnow())
        return None

    async def apply_step(self, tx: Tx, name: str) -> None:
        if name != _PARTITION_STEP:
            return await super().apply_step(tx, name)
        await partitions.convert(tx, self.partitioning, utcnow())
        return None

    async def ensure_partitions(self, now: datetime | None = None) -> list[str]:
        """Create the partitions REQUEST_EVENT_PARTITIONS_AHEAD asks for that are missing,
        each in its own short transaction; return their names. Another process creating them
        at the same time: this one skips the round."""
        if await self.schema_version() < 14:
            return []
        wanted = partitions.wanted(now or utcnow(), self.partitioning)
        created: list[str] = []
        while True:
            async with self.transaction() as tx:
                got = await tx.fetchone(
                    "SELECT pg_try_advisory_xact_lock(%s) AS ok", (PARTITION_LOCK_KEY,)
                )
                if not got or not got["ok"]:
                    return created
                gaps = partitions.missing(wanted, await partitions.list_partitions(tx))
                if not gaps:
                    return created
                created.append(await partitions.create_partition(tx, *gaps[0]))

    async def prune_events(self, cutoff: datetime) -> Pruned:
        """Drop the partitions wholly older than ``cutoff``; delete older rows, in chunks,
        only from the legacy and default partitions (the others go whole, later)."""
        async with self.transaction(readonly=True) as tx:
            existing = await partitions.list_partitions(tx)
        if not existing:  # not partitioned yet (schema before 0014)
            return await super().prune_events(cutoff)
        pruned = Pruned([])
        for partition in partitions.expired(existing, cutoff):
            async with self.transaction() as tx:
                await partitions.drop_partition(tx, partition.name)
            pruned.dropped.append(partition.name)
        names = {p.name for p in existing} - set(pruned.dropped)
        for table in (LEGACY, DEFAULT):
            while table in names:
                async with self.transaction() as tx:
                    count = await partitions.delete_chunk(tx, table, cutoff)
                pruned.deleted += count
                if count < partitions.DELETE_CHUNK:
                    break
        return pruned

    async def lock_for_migration(self, tx: Tx) -> None:
        # Held until commit: a second migrator waits here, then finds nothing left to do.
        await tx.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
