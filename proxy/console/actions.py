"""The console's one door to the management service: every page reads and acts through here.

Kept thin on purpose: it builds the service for the signed-in operator and calls it, so the
console is validated and audited exactly like the CLI and the management API, and moving the
service (shared/management/) changes this module only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from proxy.profiling import Profiler
from shared.crypto import Keyring
from shared.management import CachePurger, ChangeNotifier, Management, View
from shared.management import inputs as i
from shared.store import AuditEvent, AuditFilter, SqlStore


@dataclass(frozen=True, slots=True)
class Backend:
    """What the lifespan built that the console's actions need."""

    store: SqlStore
    keyring: Keyring
    notifier: ChangeNotifier | None
    cache: CachePurger | None
    cache_backend: str
    count_cache_hits: bool
    profiler: Profiler | None = None


class Actions:
    """Management operations on behalf of one console request."""

    def __init__(self, backend: Backend, *, client_ip: str, request_id: str) -> None:
        self._backend = backend
        self._client_ip = client_ip
        self._request_id = request_id
        self._service = Management(
            store=backend.store,
            keyring=backend.keyring,
            actor=f"console:{client_ip or 'unknown'}",
            notifier=backend.notifier,
            client_ip=client_ip,
            request_id=request_id,
            count_cache_hits=backend.count_cache_hits,
            cache=backend.cache,
            cache_backend=backend.cache_backend,
        )

    # --- profiling ---

    def slowest(self, limit: int) -> list[dict[str, Any]] | None:
        """The slowest requests of this instance's workers; None when profiling is off."""
        profiler = self._backend.profiler
        return None if profiler is None else profiler.report(limit)

    # --- projects ---

    async def list_projects(self) -> list[View]:
        listed: list[View] = (await self._service.list_projects(i.NoInput()))["data"]
        return listed

    async def show_project(self, project_id: str) -> View:
        return await self._service.show_project(i.ProjectRef(project_id=project_id))

    async def create_project(self, name: str, base_url: str | None, api_key: str) -> View:
        if base_url is None:
            return await self._service.create_project(i.CreateProject(name=name, api_key=api_key))
        return await self._service.create_project(
            i.CreateProject(name=name, base_url=base_url, api_key=api_key)
        )

    async def update_project(
        self, project_id: str, *, name: str | None, base_url: str | None, api_key: str | None
    ) -> View:
        return await self._service.update_project(
            i.UpdateProject(project_id=project_id, name=name, base_url=base_url, api_key=api_key)
        )

    async def set_project_active(self, project_id: str, active: bool) -> View:
        if active:
            return await self._service.activate_project(i.ProjectRef(project_id=project_id))
        return await self._service.deactivate_project(i.DeactivateProject(project_id=project_id))

    # --- tokens ---

    async def list_tokens(self, project_id: str | None = None) -> list[View]:
        listed: list[View] = (await self._service.list_tokens(i.ListTokens(project_id=project_id)))[
            "data"
        ]
        return listed

    async def generate_token(self, project_id: str, **limits: Any) -> View:
        return await self._service.generate_token(i.GenerateToken(project_id=project_id, **limits))

    async def update_token(self, token_id: str, **changes: Any) -> View:
        return await self._service.update_token(i.UpdateToken(token_id=token_id, **changes))

    async def revoke_token(self, token_id: str) -> View:
        return await self._service.revoke_token(i.TokenRef(token_id=token_id))

    async def reactivate_token(self, token_id: str) -> View:
        return await self.update_token(token_id, activate=True)

    # --- usage ---

    async def token_usage(self, token_id: str, limit: int = 20) -> View:
        return await self._service.token_usage(i.TokenUsage(token_id=token_id, limit=limit))

    async def project_usage(self, project_id: str, limit: int = 20) -> View:
        return await self._service.project_usage(i.ProjectUsage(project_id=project_id, limit=limit))

    async def dead_letters(self) -> int:
        return sum((await self._backend.store.dead_letter_counts()).values())

    # --- audit ---

    async def audit_page(self, flt: AuditFilter) -> View:
        return await self._service.audit_page(i.AuditQuery(**asdict(flt)))

    async def audit_sign_in(self, action: str, outcome: str, reason: str = "") -> None:
        """Sign-ins and sign-outs are security events: recorded with the management actions."""
        await self._backend.store.add_audit(
            AuditEvent(
                action=action,
                outcome=outcome,
                actor=f"console:{self._client_ip or 'unknown'}",
                target_type="console",
                target_id="",
                details={"reason": reason} if reason else {},
                request_id=self._request_id,
                client_ip=self._client_ip,
            )
        )
