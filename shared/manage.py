"""Management actions on projects, tokens and keys: validation, audit, and their JSON views.

Both the CLI (talking to the database) and the management API (serving remote CLIs) call these,
so a project made either way is validated, audited and rendered the same.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from shared.clock import from_epoch, new_id, utcnow
from shared.config import parse_duration
from shared.crypto import Keyring
from shared.errors import Conflict, LLMProxyError, NotFound, UserError
from shared.events import UNPRICED, RequestEvent
from shared.money.amounts import picos_to_usd
from shared.store import AuditEvent, AuditFilter, Project, SqlStore, Token
from shared.store.models import quota_used
from shared.tokens import display_prefix, generate_token, hash_token, mask_token

T = TypeVar("T")
View = dict[str, Any]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_PAGE = 1000


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


# --- pure validation -------------------------------------------------------------------------


def parse_token_duration(text: str) -> timedelta | None:
    """``24`` (hours, as the operator docs write it), ``30m``, ``24h``, ``7d``; ``never``/``0`` for
    no expiry."""
    value = text.strip().lower()
    if value in ("never", "0"):
        return None
    try:
        seconds = parse_duration(value, bare_unit="h")
    except ValueError:
        raise UserError(
            f"invalid duration {text!r}: use hours (24) or a unit (30m, 24h, 7d), or never"
        ) from None
    if seconds <= 0 or not math.isfinite(seconds) or seconds > 3650 * 86400:
        raise UserError(f"invalid duration {text!r}: must be between 1s and 10 years")
    return timedelta(seconds=seconds)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise UserError("project name must be 1-200 printable characters")
    return name


def check_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"base URL must be an http(s) URL with a host, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UserError("base URL must not contain credentials, a query or a fragment")
    return url


def check_api_key(key: str | None) -> str:
    key = (key or "").strip()
    if not key:
        raise UserError(
            "an upstream API key is required (--api-key, --api-key-stdin or UPSTREAM_API_KEY)"
        )
    if any(c.isspace() for c in key) or len(key) > 4096:
        raise UserError("the upstream API key must be one line without spaces")
    return key


def check_max_requests(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise UserError("max requests must be a positive integer (omit it for no limit)")
    return value


def check_page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise UserError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def check_rpm(value: int | None) -> int | None:
    """``None`` keeps the deployment's default; ``0`` means no per-token rate limit."""
    if value is not None and value < 0:
        raise UserError("rpm must be 0 (no per-token rate limit) or a positive integer")
    return value


def check_max_concurrency(value: int | None) -> int | None:
    """``0`` means no cap, stored as NULL like an omitted value."""
    if value is not None and value < 0:
        raise UserError("max concurrency must be 0 (no cap) or a positive integer")
    return value or None


def check_path_prefix(prefix: str) -> str:
    if not prefix.startswith("/") or len(prefix) > 2048 or any(ord(c) < 32 for c in prefix):
        raise UserError(f"path prefix must start with / (e.g. /v1/models), got {prefix!r}")
    return prefix


def shown_id(value: str) -> str:
    """An id as echoed in an error: in full if it has an id's shape, else masked, because people
    paste tokens where ids belong."""
    if _ID_SHAPE.fullmatch(value):
        return repr(value)
    return repr(mask_token(value))


_ID_SHAPE = re.compile(r"[0-9a-fA-F-]{1,36}")


def _safe_id(value: str) -> str:
    return value if not value or _ID_SHAPE.fullmatch(value) else mask_token(value)


# --- views -----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def remaining_requests(token: Token, *, count_cache_hits: bool = False) -> int | None:
    """What is left of the token's quota (None: no limit), by the rule the limiter seeds with.

    On the database path this is exact at once; with distributed limits Redis holds the live
    counter and this lags by the events not yet written."""
    if token.max_requests is None:
        return None
    return max(token.max_requests - quota_used(token, count_cache_hits=count_cache_hits), 0)


def token_state(
    token: Token, now: datetime | None = None, *, count_cache_hits: bool = False
) -> str:
    now = now or utcnow()
    if token.revoked_at is not None:
        return "revoked"
    if not token.is_active:
        return "inactive"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    if remaining_requests(token, count_cache_hits=count_cache_hits) == 0:
        return "exhausted"
    return "active"


def project_view(project: Project) -> View:
    return {
        "id": project.id,
        "name": project.name,
        "base_url": project.base_url,
        "is_active": project.is_active,
        "request_count": project.request_count,
        "cache_hit_count": project.cache_hit_count,
        "prompt_tokens": project.prompt_tokens,
        "completion_tokens": project.completion_tokens,
        "last_used_at": _iso(project.last_used_at),
        "created_at": _iso(project.created_at),
        "updated_at": _iso(project.updated_at),
    }


def token_view(token: Token, *, count_cache_hits: bool = False) -> View:
    return {
        "id": token.id,
        "project_id": token.project_id,
        "label": token.label,
        "prefix": token.display_prefix + "…",
        "state": token_state(token, count_cache_hits=count_cache_hits),
        "is_active": token.is_active,
        "expires_at": _iso(token.expires_at),
        "max_requests": token.max_requests,
        "rpm": token.rpm,
        "max_concurrency": token.max_concurrency,
        "request_count": token.request_count,
        "remaining_requests": remaining_requests(token, count_cache_hits=count_cache_hits),
        "cache_hit_count": token.cache_hit_count,
        "prompt_tokens": token.prompt_tokens,
        "completion_tokens": token.completion_tokens,
        "last_used_at": _iso(token.last_used_at),
        "revoked_at": _iso(token.revoked_at),
        "created_at": _iso(token.created_at),
    }


def audit_view(event: AuditEvent) -> View:
    return {
        "id": event.id,
        "ts": _iso(event.ts),
        "actor": event.actor,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "outcome": event.outcome,
        "details": event.details,
        "request_id": event.request_id,
        "client_ip": event.client_ip,
    }


def event_view(event: RequestEvent) -> View:
    return {
        "event_id": event.event_id,
        "request_id": event.request_id,
        "ts": _iso(from_epoch(event.ts)),
        "project_id": event.project_id or None,
        "token_id": event.token_id or None,
        "method": event.method,
        "path": event.path,
        "status": event.status,
        "model": event.model,
        "duration_ms": event.duration_ms,
        "upstream_ms": event.upstream_ms,
        "ttfb_ms": event.ttfb_ms,
        "request_bytes": event.request_bytes,
        "response_bytes": event.response_bytes,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.total_tokens,
        "cache_status": event.cache_status,
        "stream": event.stream,
        "error": event.error,
        "client_ip": event.client_ip,
        "usage_source": event.usage_source,
        "cached_tokens": event.cached_tokens,
        "reasoning_tokens": event.reasoning_tokens,
        # exact dollars as text (a JSON number would be read as a float); null: unpriced
        "cost_usd": picos_to_usd(None if event.cost_picousd == UNPRICED else event.cost_picousd),
    }


# --- the service -----------------------------------------------------------------------------


@dataclass
class Management:
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

    def _view(self, token: Token) -> View:
        return token_view(token, count_cache_hits=self.count_cache_hits)

    async def _audited(
        self,
        action: str,
        target_type: str,
        target_id: str,
        details: dict[str, Any],
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        """Run ``fn`` and record the outcome, success or failure, in audit_events."""
        try:
            result = await fn()
        except LLMProxyError as exc:
            await self._audit(
                action, target_type, target_id, "failure", {**details, "error": exc.code}
            )
            raise
        if isinstance(result, dict) and not target_id:
            target_id = str(result.get("id", ""))
        await self._audit(action, target_type, target_id, "success", details)
        return result

    async def _audit(
        self, action: str, target_type: str, target_id: str, outcome: str, details: dict[str, Any]
    ) -> None:
        # Ids come from user input, and people paste tokens where ids belong: store those masked.
        safe = {
            k: _safe_id(v) if k.endswith("_id") and isinstance(v, str) else v
            for k, v in details.items()
        }
        await self.store.add_audit(
            AuditEvent(
                action=action,
                outcome=outcome,
                actor=self.actor,
                target_type=target_type,
                target_id=_safe_id(target_id),
                details=safe,
                request_id=self.request_id,
                client_ip=self.client_ip,
            )
        )

    async def _project(self, project_id: str) -> Project:
        project = await self.store.get_project(project_id)
        if project is None:
            raise NotFound(f"no project with id {shown_id(project_id)}")
        return project

    async def _token(self, token_id: str) -> Token:
        token = await self.store.get_token(token_id)
        if token is None:
            raise NotFound(f"no token with id {shown_id(token_id)}")
        return token

    # --- projects ---

    async def create_project(self, name: str, base_url: str | None, api_key: str | None) -> View:
        async def go() -> View:
            clean = check_name(name)
            url = check_base_url(base_url or DEFAULT_BASE_URL)
            key = check_api_key(api_key)
            if await self.store.get_project_by_name(clean):
                raise Conflict(f"a project named {clean!r} already exists")
            now = utcnow()
            project = Project(
                id=new_id(),
                name=clean,
                base_url=url,
                api_key_enc=self.keyring.encrypt(key),
                is_active=True,
                created_at=now,
                updated_at=now,
            )
            try:
                created = await self.store.create_project(project)
            except Exception as exc:  # a racing create with the same name hits the unique index
                if await self.store.get_project_by_name(clean):
                    raise Conflict(f"a project named {clean!r} already exists") from exc
                raise
            return project_view(created)

        return await self._audited("project.create", "project", "", {"name": name.strip()}, go)

    async def list_projects(self) -> list[View]:
        return [project_view(p) for p in await self.store.list_projects()]

    async def show_project(self, project_id: str) -> View:
        return project_view(await self._project(project_id))

    async def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> View:
        async def go() -> View:
            changes: dict[str, Any] = {}
            if name is not None:
                changes["name"] = check_name(name)
                other = await self.store.get_project_by_name(changes["name"])
                if other is not None and other.id != project_id:
                    raise Conflict(f"a project named {changes['name']!r} already exists")
            if base_url is not None:
                changes["base_url"] = check_base_url(base_url)
            if api_key is not None:
                changes["api_key_enc"] = self.keyring.encrypt(check_api_key(api_key))
            if not changes:
                raise UserError("nothing to update: give --name, --base-url or a new API key")
            project, _ = await self.store.update_project(project_id, changes)
            if project is None:
                raise NotFound(f"no project with id {shown_id(project_id)}")
            await self._project_changed(project_id)
            return project_view(project)

        fields = sorted(
            k
            for k, v in (("name", name), ("base_url", base_url), ("api_key", api_key))
            if v is not None
        )
        return await self._audited("project.update", "project", project_id, {"fields": fields}, go)

    async def set_project_active(
        self, project_id: str, active: bool, *, revoke_tokens: bool = False
    ) -> View:
        async def go() -> View:
            project, revoked = await self.store.update_project(
                project_id, {"is_active": active}, revoke_tokens=revoke_tokens
            )
            if project is None:
                raise NotFound(f"no project with id {shown_id(project_id)}")
            await self._project_changed(project_id)
            return {**project_view(project), "tokens_revoked": revoked}

        action = "project.activate" if active else "project.deactivate"
        return await self._audited(
            action, "project", project_id, {"revoke_tokens": revoke_tokens}, go
        )

    async def delete_project(self, project_id: str) -> View:
        async def go() -> View:
            project = await self._project(project_id)
            await self.store.delete_project(project_id)
            await self._project_changed(project_id)
            return {"id": project.id, "name": project.name, "deleted": True}

        return await self._audited("project.delete", "project", project_id, {}, go)

    # --- tokens ---

    async def generate_token(
        self,
        project_id: str,
        *,
        duration: str | None = "24",
        max_requests: int | None = None,
        label: str = "",
        rpm: int | None = None,
        max_concurrency: int | None = None,
    ) -> View:
        async def go() -> View:
            lifetime = parse_token_duration(duration) if duration is not None else None
            limit = check_max_requests(max_requests)
            token_rpm = check_rpm(rpm)
            concurrency = check_max_concurrency(max_concurrency)
            project = await self._project(project_id)
            if not project.is_active:
                raise UserError(f"project {shown_id(project_id)} is inactive: activate it first")
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
                expires_at=(now + lifetime) if lifetime else None,
                max_requests=limit,
                rpm=token_rpm,
                max_concurrency=concurrency,
            )
            created = await self.store.create_token(token)
            return {**self._view(created), "token": secret}

        details = {
            "project_id": project_id,
            "duration": duration,
            "max_requests": max_requests,
            "rpm": rpm,
            "max_concurrency": max_concurrency,
        }
        return await self._audited("token.generate", "token", "", details, go)

    async def list_tokens(self, project_id: str | None = None) -> list[View]:
        if project_id is not None:
            await self._project(project_id)
        return [self._view(t) for t in await self.store.list_tokens(project_id)]

    async def show_token(self, token_id: str) -> View:
        return self._view(await self._token(token_id))

    async def token_usage(
        self, token_id: str, *, before_event_id: str | None = None, limit: int = 20
    ) -> View:
        """The token's totals and its request events, newest first, a page at a time."""
        token = await self._token(token_id)
        page = await self._events_page(token_id, None, before_event_id, limit)
        return {"token": token_view(token), **page}

    async def project_usage(
        self, project_id: str, *, before_event_id: str | None = None, limit: int = 20
    ) -> View:
        """The project's totals and its request events, newest first, a page at a time."""
        project = await self._project(project_id)
        page = await self._events_page(None, project_id, before_event_id, limit)
        return {"project": project_view(project), **page}

    async def _events_page(
        self, token_id: str | None, project_id: str | None, before: str | None, limit: int
    ) -> View:
        # One row more than asked tells whether another page exists without a COUNT.
        events = await self.store.list_request_events(
            token_id=token_id,
            project_id=project_id,
            before_event_id=before,
            limit=check_page_size(limit) + 1,
        )
        more = len(events) > limit
        events = events[:limit]
        return {
            "events": [event_view(e) for e in events],
            "next_before_event_id": events[-1].event_id if more else None,
        }

    async def update_token(
        self,
        token_id: str,
        *,
        activate: bool | None = None,
        max_requests: int | None = None,
        unlimited: bool = False,
        duration: str | None = None,
        label: str | None = None,
        rpm: int | None = None,
        max_concurrency: int | None = None,
    ) -> View:
        async def go() -> View:
            changes: dict[str, Any] = {}
            if rpm is not None:
                changes["rpm"] = check_rpm(rpm)
            if max_concurrency is not None:
                changes["max_concurrency"] = check_max_concurrency(max_concurrency)
            if activate is not None:
                changes["is_active"] = activate
                if activate:
                    changes["revoked_at"] = None
            if unlimited and max_requests is not None:
                raise UserError("give max requests or unlimited, not both")
            if unlimited:
                changes["max_requests"] = None
            elif max_requests is not None:
                changes["max_requests"] = check_max_requests(max_requests)
            if duration is not None:
                lifetime = parse_token_duration(duration)
                changes["expires_at"] = (utcnow() + lifetime) if lifetime else None
            if label is not None:
                changes["label"] = label.strip()[:200]
            if not changes:
                raise UserError(
                    "nothing to update: give --activate/--deactivate, --max-requests, "
                    "--rpm, --max-concurrency, --duration or --label"
                )
            if changes.get("is_active"):
                project = await self._project((await self._token(token_id)).project_id)
                if not project.is_active:
                    raise UserError("the token's project is inactive: activate it first")
            token = await self.store.update_token(token_id, changes)
            if token is None:
                raise NotFound(f"no token with id {shown_id(token_id)}")
            await self._tokens_changed([token_id])
            return self._view(token)

        details = {
            "activate": activate,
            "max_requests": max_requests,
            "rpm": rpm,
            "max_concurrency": max_concurrency,
            "unlimited": unlimited,
            "duration": duration,
            "label": label is not None,
        }
        return await self._audited("token.update", "token", token_id, details, go)

    async def revoke_token(self, token_id: str) -> View:
        async def go() -> View:
            await self._token(token_id)
            revoked = await self.store.revoke_token(token_id)
            await self._tokens_changed([token_id])
            return {**self._view(await self._token(token_id)), "revoked": revoked}

        return await self._audited("token.revoke", "token", token_id, {}, go)

    async def revoke_project_tokens(self, project_id: str) -> View:
        async def go() -> View:
            await self._project(project_id)
            tokens = await self.store.list_tokens(project_id)
            revoked = await self.store.revoke_project_tokens(project_id)
            await self._tokens_changed([t.id for t in tokens])
            return {"project_id": project_id, "revoked": revoked}

        return await self._audited("token.revoke_project", "project", project_id, {}, go)

    # --- response cache ---

    async def purge_cache(
        self, project_id: str | None = None, path_prefix: str | None = None
    ) -> View:
        """Remove cached responses (all, one project's, under a path prefix), audited. A shared
        cache is purged here and now; every worker's own cache is told through the notifier and
        purges itself within a second."""

        async def go() -> View:
            if project_id is not None and not _ID_SHAPE.fullmatch(project_id):
                raise UserError(f"invalid project id {shown_id(project_id)}")
            prefix = check_path_prefix(path_prefix) if path_prefix is not None else None
            purged = await self.cache.purge(project_id, prefix) if self.cache else None
            if self.notifier is not None:
                await self.notifier.cache_purged(project_id, prefix)
            return {
                "purged": purged,
                "backend": self.cache.name if self.cache else self.cache_backend,
                "project_id": project_id,
                "path_prefix": prefix,
            }

        backend = self.cache.name if self.cache else self.cache_backend
        details = {"project_id": project_id, "path_prefix": path_prefix, "backend": backend}
        target = "project" if project_id else "cache"
        return await self._audited("cache.purge", target, project_id or "", details, go)

    # --- keys and audit ---

    async def rotate_keys(self) -> View:
        """Re-encrypt every upstream key still under an older key with the current one."""

        async def go() -> View:
            rotated = 0
            for project in await self.store.list_projects():
                if self.keyring.needs_rotation(project.api_key_enc):
                    plaintext = self.keyring.decrypt(project.api_key_enc)
                    await self.store.update_project(
                        project.id, {"api_key_enc": self.keyring.encrypt(plaintext)}
                    )
                    rotated += 1
            return {"rotated": rotated, "key_id": self.keyring.current_id}

        return await self._audited("keys.rotate", "keys", self.keyring.current_id, {}, go)

    async def list_audit(self, flt: AuditFilter) -> list[View]:
        return list((await self.audit_page(flt))["data"])

    async def audit_page(self, flt: AuditFilter) -> View:
        """Newest first; ``next_before_id`` is the cursor of the next page (None on the last)."""
        limit = check_page_size(flt.limit)
        events = await self.store.list_audit(replace(flt, limit=limit + 1))
        more = len(events) > limit
        events = events[:limit]
        return {
            "data": [audit_view(e) for e in events],
            "next_before_id": events[-1].id if more else None,
        }

    async def _tokens_changed(self, token_ids: list[str]) -> None:
        if self.notifier is not None and token_ids:
            await self.notifier.tokens_changed(token_ids)

    async def _project_changed(self, project_id: str) -> None:
        if self.notifier is not None:
            await self.notifier.project_changed(project_id)
