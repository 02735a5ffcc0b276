"""The JSON views of projects, tokens, audit entries and request events, as clients see them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.clock import from_epoch, utcnow
from shared.deployments import deployments_of
from shared.events import UNPRICED, RequestEvent
from shared.money.amounts import picos_to_usd
from shared.store import AuditEvent, Project, Token
from shared.store.models import DeadLetter, Governed, UpstreamRow, quota_used

View = dict[str, Any]


def iso(value: datetime | None) -> str | None:
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
        "kind": project.kind,
        "is_active": project.is_active,
        "request_count": project.request_count,
        "cache_hit_count": project.cache_hit_count,
        "prompt_tokens": project.prompt_tokens,
        "completion_tokens": project.completion_tokens,
        "last_used_at": iso(project.last_used_at),
        "created_at": iso(project.created_at),
        "updated_at": iso(project.updated_at),
        "models": project.models,
        **budget_view(project),
        **deployments_view(project),
    }


def budget_view(owner: Governed) -> View:
    return {
        "budget_usd": owner.budget_usd,
        "budget_tokens": owner.budget_tokens,
        "budget_window": owner.budget_window,
        "budget_calendar": bool(owner.budget_calendar),
        "budget_mode": owner.budget_mode,
    }


def deployments_view(owner: Project | UpstreamRow) -> View:
    """An Azure project's or upstream's deployment table (``{}``: none) and api-version."""
    return {"deployments": deployments_of(owner.deployments), "api_version": owner.api_version}


def upstream_view(upstream: UpstreamRow) -> View:
    """One of a project's upstreams; its key is never part of any view."""
    return {
        "id": upstream.id,
        "project_id": upstream.project_id,
        "kind": upstream.kind,
        "base_url": upstream.base_url,
        "weight": upstream.weight,
        "priority": upstream.priority,
        "enabled": upstream.enabled,
        **deployments_view(upstream),
        "created_at": iso(upstream.created_at),
        "updated_at": iso(upstream.updated_at),
    }


def token_view(token: Token, *, count_cache_hits: bool = False) -> View:
    return {
        "id": token.id,
        "project_id": token.project_id,
        "label": token.label,
        "prefix": token.display_prefix + "…",
        "state": token_state(token, count_cache_hits=count_cache_hits),
        "is_active": token.is_active,
        "expires_at": iso(token.expires_at),
        "max_requests": token.max_requests,
        "rpm": token.rpm,
        "max_concurrency": token.max_concurrency,
        "models": token.models,
        **budget_view(token),
        "tpm": token.tpm,
        "request_count": token.request_count,
        "remaining_requests": remaining_requests(token, count_cache_hits=count_cache_hits),
        "cache_hit_count": token.cache_hit_count,
        "prompt_tokens": token.prompt_tokens,
        "completion_tokens": token.completion_tokens,
        "last_used_at": iso(token.last_used_at),
        "revoked_at": iso(token.revoked_at),
        "created_at": iso(token.created_at),
    }


def audit_view(event: AuditEvent) -> View:
    return {
        "id": event.id,
        "ts": iso(event.ts),
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
        "ts": iso(from_epoch(event.ts)),
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
        "cache_creation_tokens": event.cache_creation_tokens,
        "cache_read_tokens": event.cache_read_tokens,
        "upstream": event.upstream or None,
        "attempts": event.attempts,
        "cached_tokens": event.cached_tokens,
        "reasoning_tokens": event.reasoning_tokens,
        # exact dollars as text (a JSON number would be read as a float); null: unpriced
        "cost_usd": picos_to_usd(None if event.cost_picousd == UNPRICED else event.cost_picousd),
    }


_TAIL = "ts event_id request_id project_id token_id method path status model cache_status"
_TAIL += " duration_ms prompt_tokens completion_tokens usage_source cost_usd error"


def tail_view(event: RequestEvent) -> View:
    """An event as ``events tail`` prints it: the columns that tell requests apart."""
    full = event_view(event)
    out = {("cache" if k == "cache_status" else k): full[k] for k in _TAIL.split()}
    out["project_id"], out["token_id"] = event.project_id, event.token_id
    out["duration_ms"] = round(event.duration_ms, 3)
    return out


def dead_letter_view(letter: DeadLetter) -> View:
    return {
        "id": letter.id,
        "created_at": iso(letter.created_at),
        "reason": letter.reason,
        "entry_id": letter.entry_id,
        "event_id": letter.event_id,
        "deliveries": letter.deliveries,
        "error": letter.error,
        "replayed_at": iso(letter.replayed_at),
        "payload": letter.payload.decode("utf-8", "backslashreplace"),
    }
