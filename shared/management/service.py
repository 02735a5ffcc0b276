"""The management service: each operation checked, performed, audited and rendered as a view.

Both the CLI (on the database) and the management API (serving remote CLIs) call it, so a project
made either way is validated, audited and rendered the same. Each method takes its operation's
input dataclass (shared.management.inputs); ``call`` runs any operation from the table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis

from shared.clock import new_id, utcnow
from shared.crypto import Keyring
from shared.errors import Conflict, LLMProxyError, NotFound, UserError
from shared.management import inputs as i
from shared.management.checks import (
    DEFAULT_BASE_URL,
    ID_SHAPE,
    check_api_key,
    parse_span,
    parse_token_duration,
    safe_id,
    shown_id,
)
from shared.management.fields import (
    Operation,
    audit_details,
    fields_of,
    refuse_nul,
    stored_values,
    validated,
)
from shared.management.money import MoneyOperations
from shared.management.spend import spend_views
from shared.management.upstreams import AZURE_COLUMNS, UpstreamOperations, check_azure_only
from shared.management.views import (
    View,
    audit_view,
    dead_letter_view,
    event_view,
    project_view,
    tail_view,
    token_view,
    upstream_view,
)
from shared.store import AuditEvent, AuditFilter, Project, SqlStore, Token
from shared.store.budgets import owner_limits
from shared.streams import EVENT_FIELD, shard_keys, shard_of, stream_stats
from shared.tokens import display_prefix, generate_token, hash_token

I = TypeVar("I")  # noqa: E741


class ChangeNotifier(Protocol):
    """Told when a token or project changes, so every proxy worker drops its cached copy."""

    async def tokens_changed(self, token_ids: list[str]) -> None: ...

    async def project_changed(self, project_id: str) -> None: ...

    async def cache_purged(self, project_id: str | None, path_prefix: str | None) -> None: ...


class CachePurger(Protocol):
    """The response cache's purge (proxy.cache backends and HttpCache satisfy this)."""

    @property
    def name(self) -> str: ...

    @property
    def scope(self) -> str: ...  # "all-instances" or "this-process"

    async def purge(self, project_id: str | None = None, path_prefix: str | None = None) -> int: ...


@dataclass(slots=True)
class Audit:
    """The audit row being written for one action; the action fills in what it learns."""

    target_id: str
    details: dict[str, Any] = field(default_factory=dict)


def _limits(
    inp: i.BudgetInputs, *, given_only: bool = False, of: type = i.TokenLimits
) -> dict[str, Any]:
    """The token limits (or ``of`` another group's fields) of an input as columns (same
    names), as each field stores them."""
    return stored_values(inp, frozenset(f.name for f in fields_of(of)), given_only=given_only)


@dataclass
class Management(UpstreamOperations, MoneyOperations):
    store: SqlStore
    keyring: Keyring
    actor: str
    notifier: ChangeNotifier | None = None
    client_ip: str = ""
    request_id: str = ""
    count_cache_hits: bool = False  # QUOTA_COUNT_CACHE_HITS, for remaining_requests
    #: the cache every instance shares (the Redis backend), if any; per-worker caches are purged
    #: through the notifier
    cache: CachePurger | None = None
    cache_backend: str = "in-memory"
    #: the event pipeline, for ``event_stats``: LLM_PROXY_EVENT_BUS, and with redis-streams a
    #: client and the stream's key
    event_bus: str = "in-memory"
    redis: aioredis.Redis | None = None
    stream_key: str = ""
    stream_shards: int = 1  # REDIS_STREAM_SHARDS: shard 0 is ``stream_key`` itself

    async def call(self, op: Operation[I], inp: I) -> Any:
        """Run one operation of the table with its input."""
        refuse_nul(inp)
        return await getattr(self, op.name)(inp)

    def _view(self, token: Token) -> View:
        return token_view(token, count_cache_hits=self.count_cache_hits)

    @asynccontextmanager
    async def _audited(
        self, action: str, target_type: str, target_id: str, inp: object = None
    ) -> AsyncIterator[Audit]:
        """Record the outcome of the block, success or failure, in audit_events."""
        audit = Audit(target_id, audit_details(inp) if inp is not None else {})
        try:
            yield audit
        except LLMProxyError as exc:
            error = {**audit.details, "error": exc.code}
            await self._audit(action, target_type, audit.target_id, "failure", error)
            raise
        await self._audit(action, target_type, audit.target_id, "success", audit.details)

    async def _audit(
        self, action: str, target_type: str, target_id: str, outcome: str, details: dict[str, Any]
    ) -> None:
        # Ids come from user input, and people paste tokens where ids belong: store those masked.
        safe = {
            k: safe_id(v) if k.endswith("_id") and isinstance(v, str) else v
            for k, v in details.items()
        }
        await self.store.add_audit(
            AuditEvent(
                action=action,
                outcome=outcome,
                actor=self.actor,
                target_type=target_type,
                target_id=safe_id(target_id),
                details=safe,
                request_id=self.request_id,
                client_ip=self.client_ip,
            )
        )

    async def _project(self, ref: str) -> Project:
        """A project by id or by name; a reference that names two projects is refused."""
        by_id = await self.store.get_project(ref) if ID_SHAPE.fullmatch(ref) else None
        by_name = await self.store.get_project_by_name(ref.strip()) if ref.strip() else None
        if by_id is not None and by_name is not None and by_id.id != by_name.id:
            raise Conflict(
                f"{shown_id(ref)} is one project's id and another's name: rename the latter"
            )
        project = by_id or by_name
        if project is None:
            raise NotFound(f"no project with id or name {shown_id(ref)}")
        return project

    async def _token(self, ref: str) -> Token:
        """A token by id or by its label, when exactly one token has that label."""
        token = await self.store.get_token(ref) if ID_SHAPE.fullmatch(ref) else None
        if token is None and ref.strip():
            labelled = [t for t in await self.store.list_tokens() if t.label == ref.strip()]
            if len(labelled) > 1:
                raise Conflict(f"{len(labelled)} tokens are labelled {ref.strip()!r}: use the id")
            token = labelled[0] if labelled else None
        if token is None:
            raise NotFound(f"no token with id or label {shown_id(ref)}")
        return token

    # --- projects ---

    async def create_project(self, inp: i.CreateProject) -> View:
        if inp.api_key is None:  # a required value left out: malformed, like a missing name
            check_api_key(None)
        async with self._audited("project.create", "project", "", inp) as audit:
            audit.details = {"name": inp.name.strip()}
            inp = validated(inp)
            check_azure_only(inp.kind, inp.deployments, inp.api_version)
            if await self.store.get_project_by_name(inp.name):
                raise Conflict(f"a project named {inp.name!r} already exists")
            now = utcnow()
            project = Project(
                id=new_id(),
                name=inp.name,
                base_url=inp.base_url or DEFAULT_BASE_URL,
                api_key_enc=self.keyring.encrypt(inp.api_key or ""),
                is_active=True,
                created_at=now,
                updated_at=now,
                kind=inp.kind,
                models=inp.models or None,
                **_limits(inp, of=i.BudgetInputs),
                **stored_values(inp, AZURE_COLUMNS, given_only=False),
            )
            try:
                created = await self.store.create_project(project)
            except Exception as exc:  # a racing create with the same name hits the unique index
                if await self.store.get_project_by_name(inp.name):
                    raise Conflict(f"a project named {inp.name!r} already exists") from exc
                raise
            audit.target_id = created.id
            return project_view(created)

    async def list_projects(self, inp: i.NoInput) -> View:
        return {"data": [project_view(p) for p in await self.store.list_projects()]}

    async def show_project(self, inp: i.ProjectRef) -> View:
        project = await self._project(inp.project_id)
        upstreams = await self.store.list_upstreams(project.id)
        return {
            **project_view(project),
            "upstreams": [upstream_view(u) for u in upstreams],
            "budgets": await self._spend(project.id, project, "project"),
        }

    async def update_project(self, inp: i.UpdateProject) -> View:
        given = [
            f.name
            for f in fields_of(i.UpdateProject)
            if f.name != "project_id" and getattr(inp, f.name) is not None
        ]
        async with self._audited("project.update", "project", inp.project_id) as audit:
            audit.details = {"fields": sorted(given)}
            project = await self._project(inp.project_id)
            audit.target_id = project.id
            inp = validated(inp)
            check_azure_only(inp.kind or project.kind, inp.deployments, inp.api_version)
            changes: dict[str, Any] = {}
            if inp.name is not None:
                other = await self.store.get_project_by_name(inp.name)
                if other is not None and other.id != project.id:
                    raise Conflict(f"a project named {inp.name!r} already exists")
                changes["name"] = inp.name
            if inp.base_url is not None:
                changes["base_url"] = inp.base_url
            if inp.api_key is not None:
                changes["api_key_enc"] = self.keyring.encrypt(inp.api_key)
            if inp.kind is not None:
                changes["kind"] = inp.kind
            if inp.models is not None:
                changes["models"] = inp.models or None
            changes |= _limits(inp, given_only=True, of=i.BudgetInputs)
            changes |= stored_values(inp, AZURE_COLUMNS, given_only=True)
            if not changes:
                raise UserError(
                    "nothing to update: give --name, --base-url, --kind, --models, a budget, "
                    "--deployment, --api-version or a new API key"
                )
            updated, _ = await self.store.update_project(project.id, changes)
            if updated is None:
                raise NotFound(f"no project with id {shown_id(project.id)}")
            await self._project_changed(project.id)
            return project_view(updated)

    async def activate_project(self, inp: i.ProjectRef) -> View:
        return await self._set_active(inp.project_id, True, revoke_tokens=False)

    async def deactivate_project(self, inp: i.DeactivateProject) -> View:
        return await self._set_active(inp.project_id, False, revoke_tokens=inp.revoke_tokens)

    async def _set_active(self, ref: str, active: bool, *, revoke_tokens: bool) -> View:
        action = "project.activate" if active else "project.deactivate"
        async with self._audited(action, "project", ref) as audit:
            audit.details = {"revoke_tokens": revoke_tokens}
            project_id = (await self._project(ref)).id
            audit.target_id = project_id
            project, revoked = await self.store.update_project(
                project_id, {"is_active": active}, revoke_tokens=revoke_tokens
            )
            if project is None:
                raise NotFound(f"no project with id {shown_id(project_id)}")
            await self._project_changed(project_id)
            return {**project_view(project), "tokens_revoked": revoked}

    async def delete_project(self, inp: i.ProjectRef) -> View:
        async with self._audited("project.delete", "project", inp.project_id) as audit:
            project = await self._project(inp.project_id)
            audit.target_id = project.id
            await self.store.delete_project(project.id)
            await self._project_changed(project.id)
            return {"id": project.id, "name": project.name, "deleted": True}

    async def project_usage(self, inp: i.ProjectUsage) -> View:
        """The project's totals and its request events, newest first, a page at a time."""
        inp = validated(inp)
        project = await self._project(inp.project_id)
        page = await self._events_page(None, project.id, inp.before_event_id, inp.limit)
        return {"project": project_view(project), **page}

    # --- tokens ---

    async def generate_token(self, inp: i.GenerateToken) -> View:
        async with self._audited("token.generate", "token", "", inp) as audit:
            inp = validated(inp)
            lifetime = parse_token_duration(inp.duration)
            project = await self._project(inp.project_id)
            if not project.is_active:
                raise UserError(
                    f"project {shown_id(inp.project_id)} is inactive: activate it first"
                )
            expires = inp.expires_at or (utcnow() + lifetime if lifetime else None)
            created, secret = await self._new_token(project.id, inp.label, _limits(inp), expires)
            audit.target_id = created.id
            return {**self._view(created), "token": secret}

    async def _new_token(
        self, project_id: str, label: str, limits: dict[str, Any], expires: datetime | None
    ) -> tuple[Token, str]:
        secret = generate_token()
        now = utcnow()
        token = Token(
            id=new_id(),
            token_hash=hash_token(secret),
            display_prefix=display_prefix(secret),
            project_id=project_id,
            label=label.strip()[:200],
            is_active=True,
            created_at=now,
            updated_at=now,
            expires_at=expires,
            **limits,
        )
        return await self.store.create_token(token), secret

    async def list_tokens(self, inp: i.ListTokens) -> View:
        project_id = (await self._project(inp.project_id)).id if inp.project_id else None
        return {"data": [self._view(t) for t in await self.store.list_tokens(project_id)]}

    async def show_token(self, inp: i.TokenRef) -> View:
        token = await self._token(inp.token_id)
        return {**self._view(token), "budgets": await self._spend(token.id, token, "token")}

    async def _spend(self, owner_id: str, owner: Token | Project, kind: str) -> list[View]:
        """The owner's own budgets (a token's project's are shown with the project)."""
        return await spend_views(
            self.store, owner_limits(owner_id, owner), {owner_id: kind}, utcnow()
        )

    async def token_usage(self, inp: i.TokenUsage) -> View:
        """The token's totals and its request events, newest first, a page at a time."""
        inp = validated(inp)
        token = await self._token(inp.token_id)
        page = await self._events_page(token.id, None, inp.before_event_id, inp.limit)
        return {"token": token_view(token), **page}

    async def _events_page(
        self, token_id: str | None, project_id: str | None, before: str | None, limit: int
    ) -> View:
        # One row more than asked tells whether another page exists without a COUNT.
        events = await self.store.lagging().list_request_events(
            token_id=token_id, project_id=project_id, before_event_id=before, limit=limit + 1
        )
        more = len(events) > limit
        events = events[:limit]
        return {
            "events": [event_view(e) for e in events],
            "next_before_event_id": events[-1].event_id if more else None,
        }

    async def update_token(self, inp: i.UpdateToken) -> View:
        async with self._audited("token.update", "token", inp.token_id, inp) as audit:
            if inp.label is not None:
                audit.details["label"] = True  # a label may be long or personal: not kept
            inp = validated(inp)
            if inp.unlimited and inp.max_requests is not None:
                raise UserError("give max requests or unlimited, not both")
            if inp.duration is not None and inp.expires_at is not None:
                raise UserError("give duration or expires_at, not both")
            changes = _limits(inp, given_only=True)
            if inp.activate is not None:
                changes["is_active"] = inp.activate
                if inp.activate:
                    changes["revoked_at"] = None
            if inp.unlimited:
                changes["max_requests"] = None
            if inp.duration is not None:
                lifetime = parse_token_duration(inp.duration)
                changes["expires_at"] = (utcnow() + lifetime) if lifetime else None
            if inp.expires_at is not None:
                changes["expires_at"] = inp.expires_at
            if inp.label is not None:
                changes["label"] = inp.label.strip()[:200]
            if not changes:
                raise UserError(
                    "nothing to update: give --activate/--deactivate, --max-requests, "
                    "--rpm, --max-concurrency, --models, --duration or --label"
                )
            token = await self._token(inp.token_id)
            audit.target_id = token.id
            if changes.get("is_active"):
                project = await self._project(token.project_id)
                if not project.is_active:
                    raise UserError("the token's project is inactive: activate it first")
            updated = await self.store.update_token(token.id, changes)
            if updated is None:
                raise NotFound(f"no token with id {shown_id(token.id)}")
            await self._tokens_changed([token.id])
            return self._view(updated)

    async def revoke_token(self, inp: i.TokenRef) -> View:
        async with self._audited("token.revoke", "token", inp.token_id) as audit:
            token = await self._token(inp.token_id)
            audit.target_id = token.id
            revoked = await self.store.revoke_token(token.id)
            await self._tokens_changed([token.id])
            return {**self._view(await self._token(token.id)), "revoked": revoked}

    async def rotate_token(self, inp: i.RotateToken) -> View:
        """A new token with the old one's project, label and limits; the old one expires when the
        grace period ends (or earlier, if it was going to)."""
        async with self._audited("token.rotate", "token", inp.token_id, inp) as audit:
            grace = parse_span(inp.grace)
            old = await self._token(inp.token_id)
            audit.target_id = old.id
            if old.revoked_at is not None or not old.is_active:
                raise UserError(f"token {shown_id(old.id)} is not active: generate a new one")
            now = utcnow()
            limits = {f.name: getattr(old, f.name) for f in fields_of(i.TokenLimits)}
            if old.expires_at is not None and old.expires_at <= now:
                raise UserError(f"token {shown_id(old.id)} has expired: generate a new one")
            created, secret = await self._new_token(
                old.project_id, old.label, limits, old.expires_at
            )
            ends = now + grace
            if old.expires_at is None or old.expires_at > ends:
                await self.store.update_token(old.id, {"expires_at": ends})
            await self._tokens_changed([old.id])
            audit.details["new_token_id"] = created.id
            return {**self._view(created), "token": secret, "replaces": old.id}

    async def revoke_project_tokens(self, inp: i.ProjectRef) -> View:
        async with self._audited("token.revoke_project", "project", inp.project_id) as audit:
            project = await self._project(inp.project_id)
            audit.target_id = project.id
            tokens = await self.store.list_tokens(project.id)
            revoked = await self.store.revoke_project_tokens(project.id)
            await self._tokens_changed([t.id for t in tokens])
            return {"project_id": project.id, "revoked": revoked}

    # --- response cache ---

    async def purge_cache(self, inp: i.PurgeCache) -> View:
        """Remove cached responses (all, one project's, under a path prefix), audited. A shared
        cache is purged here and now; every worker's own cache is told through the notifier and
        purges itself within a second."""
        backend = self.cache.name if self.cache else self.cache_backend
        target = "project" if inp.project_id else "cache"
        async with self._audited("cache.purge", target, inp.project_id or "", inp) as audit:
            audit.details = {
                "project_id": inp.project_id,
                "path_prefix": inp.path_prefix,
                "backend": backend,
            }
            inp = validated(inp)
            project_id = inp.project_id
            if project_id is not None and not ID_SHAPE.fullmatch(project_id):
                # An id is purged even when its project is gone; anything else must be a name.
                named = await self.store.get_project_by_name(project_id.strip())
                if named is None:
                    raise UserError(f"invalid project id {shown_id(project_id)}")
                project_id = named.id
            purged = await self.cache.purge(project_id, inp.path_prefix) if self.cache else None
            if self.notifier is not None:
                await self.notifier.cache_purged(project_id, inp.path_prefix)
            return {
                "purged": purged,
                "backend": backend,
                "project_id": project_id,
                "path_prefix": inp.path_prefix,
            }

    # --- keys and audit ---

    async def rotate_keys(self, inp: i.NoInput) -> View:
        """Re-encrypt every upstream key still under an older key with the current one."""
        async with self._audited("keys.rotate", "keys", self.keyring.current_id):
            rotated = 0
            for project in await self.store.list_projects():
                if self.keyring.needs_rotation(project.api_key_enc):
                    plaintext = self.keyring.decrypt(project.api_key_enc)
                    await self.store.update_project(
                        project.id, {"api_key_enc": self.keyring.encrypt(plaintext)}
                    )
                    rotated += 1
            return {"rotated": rotated, "key_id": self.keyring.current_id}

    async def audit_page(self, inp: i.AuditQuery) -> View:
        """Newest first; ``next_before_id`` is the cursor of the next page (None on the last)."""
        inp = validated(inp)
        flt = AuditFilter(**{**vars_of(inp), "limit": inp.limit + 1})
        events = await self.store.lagging().list_audit(flt)
        more = len(events) > inp.limit
        events = events[: inp.limit]
        return {
            "data": [audit_view(e) for e in events],
            "next_before_id": events[-1].id if more else None,
        }

    # --- the event pipeline ---

    async def tail_events(self, inp: i.TailEvents) -> View:
        """The latest ``limit`` events (oldest first), or those after a cursor."""
        inp = validated(inp)
        token_id = (await self._token(inp.token_id)).id if inp.token_id else None
        project_id = (await self._project(inp.project_id)).id if inp.project_id else None
        if inp.after_event_id and not self.store.valid_id(inp.after_event_id):
            raise UserError(f"after_event_id is not an event id: {shown_id(inp.after_event_id)}")
        after = (inp.after, inp.after_event_id or "") if inp.after is not None else None
        events = await self.store.lagging().list_events(
            limit=inp.limit, token_id=token_id, project_id=project_id, after=after
        )
        return {"data": [tail_view(e) for e in events]}

    async def event_stats(self, inp: i.NoInput) -> View:
        events = await self.store.lagging().event_stats()
        out: View = {
            "events": int(events.get("events") or 0),
            "oldest_event": _when(events.get("oldest_ts")),
            "newest_event": _when(events.get("newest_ts")),
            "dead_letters": await self.store.lagging().dead_letter_counts(),
            "event_bus": self.event_bus,
        }
        if self.event_bus == "redis-streams" and self.redis is not None:
            keys = shard_keys(self.stream_key, self.stream_shards)
            every: list[View] = []
            for key in keys:
                stats = await stream_stats(self.redis, key)
                every.append(
                    {
                        "key": key,
                        "length": stats.length,
                        "groups": [asdict(g) for g in stats.groups],
                    }
                )
            out["stream"] = every[0]
            if len(every) > 1:  # shard 0 as before, then each shard and the total
                out["stream"] = {
                    **every[0],
                    "shards": every,
                    "total_length": sum(int(e["length"]) for e in every),
                }
        return out

    async def dead_letters(self, inp: i.DeadLetterQuery) -> View:
        inp = validated(inp)
        letters = await self.store.list_dead_letters(
            reason=inp.reason, include_replayed=inp.include_replayed, limit=inp.limit
        )
        return {"data": [dead_letter_view(x) for x in letters]}

    async def requeue_dead_letters(self, inp: i.RequeueDeadLetters) -> View:
        """Dead letters back onto the stream, each marked replayed once it is there. A crash in
        between leaves it unmarked, to be requeued again: the dispatcher's insert is idempotent
        by event id, so a repeat records nothing twice, and nothing is lost."""
        async with self._audited("events.requeue", "dead_letters", "", inp) as audit:
            inp = validated(inp)
            if self.event_bus != "redis-streams" or self.redis is None:
                raise UserError(
                    "this deployment has no event stream (LLM_PROXY_EVENT_BUS is not "
                    "redis-streams): replay dead letters where the database is reachable"
                )
            letters = await self.store.list_dead_letters(
                ids=inp.ids or (), reason=inp.reason, limit=inp.limit
            )
            done: list[int] = []
            keys = shard_keys(self.stream_key, self.stream_shards)
            for letter in letters:
                assert letter.id is not None
                key = keys[shard_of(letter.event_id or "", self.stream_shards)]
                await self.redis.xadd(key, {EVENT_FIELD: letter.payload})
                async with self.store.transaction() as tx:
                    await self.store.mark_dead_letter_replayed(tx, letter.id)
                done.append(letter.id)
            audit.details["requeued"] = len(done)
            return {"requeued": len(done), "ids": done, "stream": self.stream_key}

    async def _tokens_changed(self, token_ids: list[str]) -> None:
        if self.notifier is not None and token_ids:
            await self.notifier.tokens_changed(token_ids)

    async def _project_changed(self, project_id: str) -> None:
        if self.notifier is not None:
            await self.notifier.project_changed(project_id)


def _when(value: Any) -> str | None:
    """A time the stores give as a datetime (Postgres) or text (SQLite), as ISO 8601."""
    if value is None or isinstance(value, str):
        return value
    return str(value.isoformat()).replace("+00:00", "Z")


def vars_of(value: object) -> dict[str, Any]:
    """An input's fields as a dict (slotted dataclasses have no ``__dict__``)."""
    return {f.name: getattr(value, f.name) for f in fields_of(type(value))}
