"""The change log that tells every worker to drop a cached token or project."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from shared.clock import utcnow
from shared.store.rows import Tables


class Changes(Tables):
    async def record_changes(self, kind: str, target_ids: Sequence[str]) -> None:
        """Log that these tokens/projects changed; entries older than a day are pruned."""
        now = utcnow()
        async with self.transaction() as tx:
            for target_id in target_ids:
                await tx.execute(
                    "INSERT INTO changes (ts, kind, target_id) VALUES (%s, %s, %s)",
                    (now, kind, target_id),
                )
            await tx.execute("DELETE FROM changes WHERE ts < %s", (now - timedelta(days=1),))

    async def changes_since(self, after_id: int, limit: int = 1000) -> list[tuple[int, str, str]]:
        """``(id, kind, target_id)`` logged after ``after_id``, oldest first."""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                "SELECT id, kind, target_id FROM changes WHERE id > %s ORDER BY id LIMIT %s",
                (after_id, limit),
            )
        return [(int(r["id"]), r["kind"], r["target_id"]) for r in rows]

    async def last_change_id(self) -> int:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone("SELECT MAX(id) AS n FROM changes")
        return int(row["n"] or 0) if row else 0
