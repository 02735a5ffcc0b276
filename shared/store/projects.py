"""The projects table."""

from __future__ import annotations

from typing import Any

from shared.clock import utcnow
from shared.store.models import Project
from shared.store.rows import (
    BUDGET_COLUMNS,
    PROJECT_COLUMNS,
    PROJECT_UPDATABLE,
    Tables,
    project_from_row,
)


class Projects(Tables):
    async def create_project(self, project: Project) -> Project:
        fields: tuple[str, ...] = ("id", "name", "base_url", "api_key_enc", "is_active")
        fields += ("created_at", "updated_at", "kind", "models", *BUDGET_COLUMNS)
        fields += ("deployments", "api_version")
        return project_from_row(await self._insert("projects", project, fields, PROJECT_COLUMNS))

    async def get_project(self, project_id: str) -> Project | None:
        if not self.valid_id(project_id):
            return None
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                f"SELECT {PROJECT_COLUMNS} FROM projects WHERE id = %s", (project_id,)
            )
        return project_from_row(row) if row else None

    async def get_project_by_name(self, name: str) -> Project | None:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                f"SELECT {PROJECT_COLUMNS} FROM projects WHERE name = %s", (name,)
            )
        return project_from_row(row) if row else None

    async def list_projects(self) -> list[Project]:
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {PROJECT_COLUMNS} FROM projects ORDER BY created_at, name"
            )
        return [project_from_row(r) for r in rows]

    async def update_project(
        self, project_id: str, changes: dict[str, Any], *, revoke_tokens: bool = False
    ) -> tuple[Project | None, int]:
        """Apply ``changes`` and optionally revoke every token of the project, in one
        transaction. Returns the updated project (None if unknown) and the tokens revoked."""
        unknown = set(changes) - PROJECT_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not self.valid_id(project_id):
            return None, 0
        now = utcnow()
        sets = ", ".join(f"{name} = %s" for name in changes)
        sets = f"{sets}, updated_at = %s" if sets else "updated_at = %s"
        async with self.transaction() as tx:
            row = await tx.fetchone(
                f"UPDATE projects SET {sets} WHERE id = %s RETURNING {PROJECT_COLUMNS}",
                (*changes.values(), now, project_id),
            )
            revoked = 0
            if row is not None and revoke_tokens:
                revoked = await self._revoke(tx, "project_id = %s", project_id, now)
        return (project_from_row(row) if row else None), revoked

    async def delete_project(self, project_id: str) -> bool:
        if not self.valid_id(project_id):
            return False
        async with self.transaction() as tx:
            count = await tx.execute("DELETE FROM projects WHERE id = %s", (project_id,))
        return count > 0
