"""The request_events table, and the usage aggregates written in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.events import FINAL, RequestEvent
from shared.store.models import DeadLetter
from shared.store.partitions import DELETE_CHUNK, Pruned
from shared.store.prices import SELECT_PRICES_SQL, book_of
from shared.store.rollups import UPSERT_ROLLUP_SQL, rollup_params, rollups_of
from shared.store.rows import (
    COMPLETE_EVENT_SQL,
    EVENT_COLUMNS,
    INSERT_EVENT_SQL,
    Inserted,
    Row,
    Tables,
    Tx,
    complete_params,
    event_from_row,
    event_params,
    one_per_request,
    price_events,
    usage_updates,
)


class RequestEvents(Tables):
    async def record_events(self, events: Sequence[RequestEvent]) -> int:
        """Insert events (duplicates by event_id skipped) and add only the inserted ones to the
        token and project aggregates, all in one transaction. Returns the rows inserted."""
        return len(await self.record_batch(events))

    async def record_batch(
        self, events: Sequence[RequestEvent], dead_letters: Sequence[DeadLetter] = ()
    ) -> list[RequestEvent]:
        """One dispatcher batch in one transaction: the events (duplicates skipped), the
        aggregates of the ones actually inserted, and the batch's dead letters. Returns the
        events inserted now."""
        if not events and not dead_letters:
            return []
        async with self.transaction() as tx:
            if events:  # costed with the prices as this transaction sees them
                price_events(events, book_of(await tx.fetchall(SELECT_PRICES_SQL)))
            inserted = await self.insert_events(tx, events) if events else []
            if inserted:
                await self.apply_usage(tx, inserted)
                await self.apply_rollups(tx, inserted)
            if dead_letters:
                await self.insert_dead_letters(tx, dead_letters)
        return inserted

    async def insert_events(self, tx: Tx, events: Sequence[RequestEvent]) -> list[RequestEvent]:
        """Insert new rows; a final whose accepted row is there replaces it. Returns
        ``Inserted``: what changed, for the aggregates."""
        inserted = Inserted()
        for event in one_per_request(events):
            if await tx.execute(INSERT_EVENT_SQL, event_params(event)):
                inserted.append(event)
            elif event.phase == FINAL and await tx.execute(
                COMPLETE_EVENT_SQL, complete_params(event)
            ):
                inserted.append(event)
                inserted.completed.add(event.event_id)
        return inserted

    async def apply_usage(self, tx: Tx, inserted: Sequence[RequestEvent]) -> None:
        for sql, params in usage_updates(inserted, self.latest_sql):
            await tx.execute(sql, params)

    async def apply_rollups(self, tx: Tx, inserted: Sequence[RequestEvent]) -> None:
        for key, rollup in rollups_of(inserted):
            await tx.execute(UPSERT_ROLLUP_SQL, rollup_params(key, rollup))

    async def list_request_events(
        self,
        *,
        token_id: str | None = None,
        project_id: str | None = None,
        before_event_id: str | None = None,
        limit: int = 50,
    ) -> list[RequestEvent]:
        """A token's or a project's request events, newest first. Page with ``before_event_id``
        set to the last event_id of the previous page; an unknown cursor yields no rows."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("token_id", token_id), ("project_id", project_id)):
            if value is not None:
                if not self.valid_id(value):
                    return []
                clauses.append(f"{column} = %s")
                params.append(value)
        if before_event_id is not None:
            if not self.valid_id(before_event_id):
                return []
            # (ts, event_id) orders events totally, even when two share a timestamp.
            clauses.append(
                "(ts, event_id) < (SELECT c.ts, c.event_id FROM request_events c "
                "WHERE c.event_id = %s)"
            )
            params.append(before_event_id)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {EVENT_COLUMNS} FROM request_events {where} "
                "ORDER BY ts DESC, event_id DESC LIMIT %s",
                (*params, limit),
            )
        return [event_from_row(r) for r in rows]

    async def count_events(self, token_id: str | None = None) -> int:
        where, params = ("WHERE token_id = %s", (token_id,)) if token_id else ("", ())
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(f"SELECT COUNT(*) AS n FROM request_events {where}", params)
        return int(row["n"]) if row else 0

    async def list_events(
        self,
        *,
        limit: int = 20,
        token_id: str | None = None,
        project_id: str | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[RequestEvent]:
        """The newest ``limit`` events (oldest first), or with ``after`` = (ts, event_id) the
        oldest ones after that point (``manage events tail --follow``)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("token_id", token_id), ("project_id", project_id)):
            if value is not None:
                if not self.valid_id(value):
                    return []
                clauses.append(f"{column} = %s")
                params.append(value)
        if after is not None and not after[1]:  # a time alone: every event from then on
            clauses.append("ts >= %s")
            params.append(after[0])
        elif after is not None:
            clauses.append("(ts > %s OR (ts = %s AND event_id > %s))")
            params.extend((after[0], after[0], after[1]))
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        order = "ASC" if after is not None else "DESC"
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {EVENT_COLUMNS} FROM request_events {where} "
                f"ORDER BY ts {order}, event_id {order} LIMIT %s",
                (*params, limit),
            )
        events = [event_from_row(r) for r in rows]
        return events if after is not None else events[::-1]

    async def event_stats(self) -> Row:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT COUNT(*) AS events, MIN(ts) AS oldest_ts, MAX(ts) AS newest_ts "
                "FROM request_events"
            )
        return row or {}

    async def ensure_partitions(self, now: datetime | None = None) -> list[str]:
        """Create the partitions still missing ahead (Postgres); return their names."""
        return []

    async def prune_events(self, cutoff: datetime) -> Pruned:
        """Retention: remove the events older than ``cutoff``; here by deleting them in
        chunks (Postgres drops whole partitions instead)."""
        pruned = Pruned([])
        while True:
            count = await self.delete_events_before(cutoff, limit=DELETE_CHUNK)
            pruned.deleted += count
            if count < DELETE_CHUNK:
                return pruned

    async def delete_events_before(self, cutoff: datetime, *, limit: int = 10_000) -> int:
        """Delete at most ``limit`` events older than ``cutoff`` (short transactions: callers
        loop until it returns less than ``limit``)."""
        async with self.transaction() as tx:
            return await tx.execute(
                "DELETE FROM request_events WHERE event_id IN (SELECT event_id FROM "
                "request_events WHERE ts < %s ORDER BY ts LIMIT %s)",
                (cutoff, limit),
            )
