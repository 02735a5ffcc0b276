"""The embedded store: one SQLite file, a connection per process, statements run off the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

from shared.events import ACCEPTED, FINAL, RequestEvent
from shared.store.base import (
    COMPLETE_EVENT_SQL,
    INSERT_EVENT_SQL,
    Inserted,
    Row,
    SqlStore,
    Tx,
    event_params,
    one_per_request,
    price_events,
    usage_updates,
)
from shared.store.prices import SELECT_PRICES_SQL, book_of
from shared.store.rollups import UPSERT_ROLLUP_SQL, rollup_params, rollups_of

T = TypeVar("T")
_BOOL_COLUMNS = frozenset({"is_active", "stream", "budget_calendar"})


def _is_time_column(name: str) -> bool:
    return name == "ts" or name.endswith("_at")


def format_ts(value: datetime) -> str:
    """Fixed-width UTC text, so string order is time order."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )


def _param(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value)
    return value


@lru_cache(maxsize=512)
def _qmark(sql: str) -> str:
    return sql.replace("%s", "?")


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    row: Row = {}
    for (name, *_), value in zip(cursor.description, values, strict=True):
        if value is not None:
            if name in _BOOL_COLUMNS:
                value = bool(value)
            elif _is_time_column(name) and isinstance(value, str):
                value = datetime.fromisoformat(value)
        row[name] = value
    return row


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection, run: Any) -> None:
        self._conn = conn
        self._run = run

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        args = tuple(_param(p) for p in params)
        return int(await self._run(lambda: self._conn.execute(_qmark(sql), args).rowcount))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        args = tuple(_param(p) for p in params)

        def go() -> list[Row]:
            cur = self._conn.execute(_qmark(sql), args)
            return [_row(cur, r) for r in cur.fetchall()]

        rows: list[Row] = await self._run(go)
        return rows

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class SqliteStore(SqlStore):
    """All statements of one process go through one connection on one thread, serialised by a
    lock; other processes (gunicorn workers, the CLI) coordinate through SQLite's file locks."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Any) -> Any:
        assert self._executor is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self, *, wait: bool = False) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn

        self._conn = await self._run(connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        async with self._lock:
            conn = self._conn
            assert conn is not None, "store is not open"
            # IMMEDIATE takes the write lock up front, so a read-then-write never fails with
            # SQLITE_BUSY half way; readers use DEFERRED and never block writers under WAL.
            await self._run(lambda: conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE"))
            try:
                yield _SqliteTx(conn, self._run)
            except BaseException:
                await self._run(lambda: conn.execute("ROLLBACK"))
                raise
            await self._run(lambda: conn.execute("COMMIT"))

    async def _in_one_hop(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` as one write transaction in a single trip to the store's thread: the
        statements of the hot paths (event batches, quota counts) need no await between them."""
        async with self._lock:
            conn = self._conn
            assert conn is not None, "store is not open"

            def run() -> T:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result

            result: T = await self._run(run)
            return result

    async def record_events(self, events: Sequence[RequestEvent]) -> int:
        if not events:
            return 0
        events = one_per_request(events)
        insert = _qmark(INSERT_EVENT_SQL)
        complete = _qmark(COMPLETE_EVENT_SQL)

        def write(conn: sqlite3.Connection) -> int:
            cur = conn.execute(SELECT_PRICES_SQL)
            names = [d[0] for d in cur.description]
            price_events(events, book_of([dict(zip(names, r, strict=True)) for r in cur]))
            rows = [tuple(_param(p) for p in event_params(e)) for e in events]
            # Redelivered events are rare: find them with one indexed lookup, then insert the
            # rest in one executemany (per-row executes dominated the embedded proxy's CPU).
            marks = ",".join("?" * len(events))
            known = dict(
                conn.execute(
                    f"SELECT event_id, phase FROM request_events WHERE event_id IN ({marks})",
                    [e.event_id for e in events],
                ).fetchall()
            )
            inserted = Inserted()
            fresh, finishing = [], []
            for e, row in zip(events, rows, strict=True):
                phase = known.get(e.event_id)
                if phase is None:
                    fresh.append(row)
                    inserted.append(e)
                elif phase == ACCEPTED and e.phase == FINAL:  # replaces its accepted row
                    finishing.append((*row[1:], row[0]))
                    inserted.append(e)
                    inserted.completed.add(e.event_id)
            conn.executemany(insert, fresh)
            if finishing:
                conn.executemany(complete, finishing)
            for sql, params in usage_updates(inserted, self.latest_sql):
                conn.execute(_qmark(sql), tuple(_param(p) for p in params))
            upsert = _qmark(UPSERT_ROLLUP_SQL)
            conn.executemany(upsert, [rollup_params(k, r) for k, r in rollups_of(inserted)])
            return len(inserted)

        return await self._in_one_hop(write)

    async def take_quota(self, token_id: str, *, count_cache_hits: bool, floor: int = 0) -> bool:
        sql, params = self.take_quota_statement(token_id, count_cache_hits, floor)
        return await self._in_one_hop(lambda conn: conn.execute(_qmark(sql), params).rowcount > 0)

    async def schema_version(self) -> int:
        async with self.transaction(readonly=True) as tx:
            table = await tx.fetchone(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            )
            if table is None:
                return 0
            row = await tx.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0
