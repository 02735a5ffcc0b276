"""The dead_letters table: stream entries the dispatcher could not record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.clock import utcnow
from shared.store.models import DeadLetter
from shared.store.rows import DEAD_LETTER_COLUMNS, Tables, Tx


class DeadLetters(Tables):
    async def insert_dead_letters(self, tx: Tx, items: Sequence[DeadLetter]) -> None:
        now = utcnow()
        for item in items:
            await tx.execute(
                "INSERT INTO dead_letters (stream_key, entry_id, event_id, reason, error, "
                "deliveries, consumer, payload, created_at) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (stream_key, entry_id) DO NOTHING",
                (
                    item.stream_key,
                    item.entry_id,
                    item.event_id,
                    item.reason,
                    item.error,
                    item.deliveries,
                    item.consumer,
                    item.payload,
                    item.created_at or now,
                ),
            )

    async def list_dead_letters(
        self,
        *,
        ids: Sequence[int] = (),
        reason: str | None = None,
        include_replayed: bool = False,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Oldest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if ids:
            clauses.append(f"id IN ({', '.join(['%s'] * len(ids))})")
            params.extend(ids)
        if reason is not None:
            clauses.append("reason = %s")
            params.append(reason)
        if not include_replayed:
            clauses.append("replayed_at IS NULL")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY id LIMIT %s",
                (*params, limit),
            )
        return [DeadLetter(**{**r, "payload": bytes(r["payload"])}) for r in rows]

    async def mark_dead_letter_replayed(self, tx: Tx, dead_letter_id: int) -> None:
        await tx.execute(
            "UPDATE dead_letters SET replayed_at = %s WHERE id = %s", (utcnow(), dead_letter_id)
        )

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters not yet replayed, by reason."""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                "SELECT reason, COUNT(*) AS n FROM dead_letters WHERE replayed_at IS NULL "
                "GROUP BY reason ORDER BY reason"
            )
        return {r["reason"]: int(r["n"]) for r in rows}
