"""The upstreams table: a project's several upstreams (kind, base URL, encrypted key, weight,
priority, enabled, Azure deployments)."""

from __future__ import annotations

from typing import Any

from shared.clock import utcnow
from shared.store.models import UpstreamRow
from shared.store.rows import Row, Tables, Tx

COLUMNS = (
    "id, project_id, kind, base_url, api_key_enc, weight, priority, enabled, created_at, "
    "updated_at, deployments, api_version"
)
UPDATABLE = frozenset(
    {"kind", "base_url", "api_key_enc", "weight", "priority", "enabled", "deployments"}
    | {"api_version"}
)


def upstream_from_row(row: Row) -> UpstreamRow:
    return UpstreamRow(**{**row, "enabled": bool(row["enabled"])})


async def of_project(tx: Tx, project_id: str) -> tuple[UpstreamRow, ...]:
    """A project's upstreams in a stable order (priority, then creation)."""
    rows = await tx.fetchall(
        f"SELECT {COLUMNS} FROM upstreams WHERE project_id = %s ORDER BY priority, created_at, id",
        (project_id,),
    )
    return tuple(upstream_from_row(r) for r in rows)


class Upstreams(Tables):
    async def list_upstreams(self, project_id: str) -> tuple[UpstreamRow, ...]:
        if not self.valid_id(project_id):
            return ()
        async with self.transaction(readonly=True) as tx:
            return await of_project(tx, project_id)

    async def get_upstream(self, upstream_id: str) -> UpstreamRow | None:
        if not self.valid_id(upstream_id):
            return None
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                f"SELECT {COLUMNS} FROM upstreams WHERE id = %s", (upstream_id,)
            )
        return upstream_from_row(row) if row else None

    async def create_upstream(self, upstream: UpstreamRow) -> UpstreamRow:
        fields = tuple(c.strip() for c in COLUMNS.split(","))
        return upstream_from_row(await self._insert("upstreams", upstream, fields, COLUMNS))

    async def update_upstream(
        self, upstream_id: str, changes: dict[str, Any]
    ) -> UpstreamRow | None:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not self.valid_id(upstream_id):
            return None
        sets = ", ".join(f"{name} = %s" for name in (*changes, "updated_at"))
        async with self.transaction() as tx:
            row = await tx.fetchone(
                f"UPDATE upstreams SET {sets} WHERE id = %s RETURNING {COLUMNS}",
                (*changes.values(), utcnow(), upstream_id),
            )
        return upstream_from_row(row) if row else None

    async def delete_upstream(self, upstream_id: str) -> bool:
        if not self.valid_id(upstream_id):
            return False
        async with self.transaction() as tx:
            return await tx.execute("DELETE FROM upstreams WHERE id = %s", (upstream_id,)) > 0
