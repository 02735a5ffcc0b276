"""Management of a project's several upstreams: add, list, update, remove (keys encrypted,
never shown). A mixin of ``Management``, which owns auditing and change notices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.clock import new_id, utcnow
from shared.errors import NotFound, UserError
from shared.kinds import AZURE_OPENAI
from shared.management import inputs as i
from shared.management.checks import check_api_key, shown_id
from shared.management.fields import stored_values, validated
from shared.management.views import View, upstream_view
from shared.store.models import UpstreamRow

#: the inputs a project and an upstream both take for Azure deployments, stored as named
AZURE_COLUMNS = frozenset({"deployments", "api_version"})


def check_azure_only(
    kind: str, deployments: dict[str, str] | None, api_version: str | None
) -> None:
    """A deployment table or an api-version set on another kind would be kept and never used."""
    if kind != AZURE_OPENAI and (deployments or api_version):
        raise UserError(
            f"--deployment and --api-version are for kind {AZURE_OPENAI} (this one is {kind})"
        )


if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from shared.crypto import Keyring
    from shared.management.service import Audit
    from shared.store import Project, SqlStore


class UpstreamOperations:
    if TYPE_CHECKING:  # what Management, which this is a part of, provides
        store: SqlStore
        keyring: Keyring

        def _audited(
            self, action: str, target_type: str, target_id: str, inp: object = None
        ) -> AbstractAsyncContextManager[Audit]: ...

        async def _project(self, ref: str) -> Project: ...

        async def _project_changed(self, project_id: str) -> None: ...

    async def add_upstream(self, inp: i.AddUpstream) -> View:
        if inp.api_key is None:
            check_api_key(None)  # required here: an upstream without a key cannot serve
        async with self._audited("upstream.add", "upstream", "", inp) as audit:
            inp = validated(inp)
            check_azure_only(inp.kind, inp.deployments, inp.api_version)
            project = await self._project(inp.project_id)
            audit.details = {**audit.details, "project_id": project.id}
            now = utcnow()
            row = UpstreamRow(
                new_id(),
                project.id,
                inp.kind,
                inp.base_url,
                self.keyring.encrypt(inp.api_key or ""),
                inp.weight,
                inp.priority,
                True,
                now,
                now,
                **stored_values(inp, AZURE_COLUMNS, given_only=False),
            )
            created = await self.store.create_upstream(row)
            audit.target_id = created.id
            await self._project_changed(project.id)
            return upstream_view(created)

    async def list_upstreams(self, inp: i.ListUpstreams) -> View:
        project = await self._project(inp.project_id)
        return {"data": [upstream_view(u) for u in await self.store.list_upstreams(project.id)]}

    async def update_upstream(self, inp: i.UpdateUpstream) -> View:
        async with self._audited("upstream.update", "upstream", inp.upstream_id, inp) as audit:
            inp = validated(inp)
            changes: dict[str, Any] = {
                name: getattr(inp, name)
                for name in ("base_url", "kind", "weight", "priority", "enabled")
                if getattr(inp, name) is not None
            }
            if inp.api_key is not None:
                changes["api_key_enc"] = self.keyring.encrypt(inp.api_key)
            changes |= stored_values(inp, AZURE_COLUMNS, given_only=True)
            if not changes:
                raise UserError(
                    "nothing to update: give --base-url, --api-key, --kind, --weight, "
                    "--priority, --enabled/--disabled, --deployment or --api-version"
                )
            found = await self._upstream(inp.upstream_id, inp.project_id)
            check_azure_only(inp.kind or found.kind, inp.deployments, inp.api_version)
            updated = await self.store.update_upstream(found.id, changes)
            if updated is None:  # removed meanwhile
                raise NotFound(f"no upstream with id {shown_id(inp.upstream_id)}")
            audit.target_id = updated.id
            await self._project_changed(updated.project_id)
            return upstream_view(updated)

    async def remove_upstream(self, inp: i.UpstreamRef) -> View:
        async with self._audited("upstream.remove", "upstream", inp.upstream_id, inp):
            found = await self._upstream(inp.upstream_id, inp.project_id)
            if not await self.store.delete_upstream(found.id):
                raise NotFound(f"no upstream with id {shown_id(inp.upstream_id)}")
            await self._project_changed(found.project_id)
            return {"id": found.id, "removed": True}

    async def _upstream(self, upstream_id: str, project_ref: str | None) -> UpstreamRow:
        """The upstream an id names; with a project (id or name), only one of that project's."""
        found = await self.store.get_upstream(upstream_id)
        if found is None:
            raise NotFound(f"no upstream with id {shown_id(upstream_id)}")
        if project_ref is not None:
            project = await self._project(project_ref)
            if found.project_id != project.id:
                raise NotFound(
                    f"upstream {shown_id(upstream_id)} is not one of project "
                    f"{project.name!r}'s upstreams"
                )
        return found
