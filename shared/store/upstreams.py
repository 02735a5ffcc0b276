"""The upstreams table: a project's several upstreams (kind, base URL, encrypted key, weight,
priority, enabled), over the store's transaction seam."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.clock import utcnow

if TYPE_CHECKING:  # base imports this module for the auth query
    from shared.store.base import Row, SqlStore, Tx

COLUMNS = (
    "id, project_id, kind, base_url, api_key_enc, weight, priority, enabled, created_at, updated_at"
)
UPDATABLE = frozenset({"kind", "base_url", "api_key_enc", "weight", "priority", "enabled"})


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    id: str
    project_id: str
    kind: str
    base_url: str
    api_key_enc: str
    weight: int
    priority: int
    enabled: bool
    created_at: datetime
    updated_at: datetime


def from_row(row: Row) -> UpstreamRow:
    return UpstreamRow(**{**row, "enabled": bool(row["enabled"])})


async def of_project(tx: Tx, project_id: str) -> tuple[UpstreamRow, ...]:
    """A project's upstreams in a stable order (priority, then creation)."""
    rows = await tx.fetchall(
        f"SELECT {COLUMNS} FROM upstreams WHERE project_id = %s ORDER BY priority, created_at, id",
        (project_id,),
    )
    return tuple(from_row(r) for r in rows)


async def list_upstreams(store: SqlStore, project_id: str) -> tuple[UpstreamRow, ...]:
    if not store.valid_id(project_id):
        return ()
    async with store.transaction(readonly=True) as tx:
        return await of_project(tx, project_id)


async def create_upstream(store: SqlStore, upstream: UpstreamRow) -> UpstreamRow:
    async with store.transaction() as tx:
        row = await tx.fetchone(
            f"INSERT INTO upstreams ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            f"RETURNING {COLUMNS}",
            (
                upstream.id,
                upstream.project_id,
                upstream.kind,
                upstream.base_url,
                upstream.api_key_enc,
                upstream.weight,
                upstream.priority,
                upstream.enabled,
                upstream.created_at,
                upstream.updated_at,
            ),
        )
    assert row is not None
    return from_row(row)


async def update_upstream(
    store: SqlStore, upstream_id: str, changes: dict[str, Any]
) -> UpstreamRow | None:
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not store.valid_id(upstream_id):
        return None
    sets = ", ".join(f"{name} = %s" for name in (*changes, "updated_at"))
    async with store.transaction() as tx:
        row = await tx.fetchone(
            f"UPDATE upstreams SET {sets} WHERE id = %s RETURNING {COLUMNS}",
            (*changes.values(), utcnow(), upstream_id),
        )
    return from_row(row) if row else None


async def delete_upstream(store: SqlStore, upstream_id: str) -> bool:
    if not store.valid_id(upstream_id):
        return False
    async with store.transaction() as tx:
        return await tx.execute("DELETE FROM upstreams WHERE id = %s", (upstream_id,)) > 0
