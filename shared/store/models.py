"""Rows of the data model as typed, immutable records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Governed:
    """What a token or a project may use and spend: its model scope and its budget (the
    management inputs that set them: ``shared.management.inputs.BudgetInputs``)."""

    models: str | None = None  # the model scope: comma-separated names and globs; None: any
    budget_usd: str | None = None  # exact dollars over budget_window; None: no dollar budget
    budget_tokens: int | None = None
    budget_window: str | None = None  # '5h', '1d', '1mo'
    budget_calendar: bool | None = None  # calendar window instead of rolling
    budget_mode: str | None = None  # 'hard' (refuse) or 'soft' (flag); None: hard


@dataclass(frozen=True, slots=True)
class Project(Governed):
    id: str
    name: str
    base_url: str
    api_key_enc: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    request_count: int = 0
    cache_hit_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_used_at: datetime | None = None
    kind: str = "openai"  # the provider kind (proxy/upstream/providers.py)
    deployments: str | None = None  # azure-openai: model -> deployment (shared/deployments.py)
    api_version: str | None = None  # azure-openai: the api-version sent; None: the default


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    """One of a project's several upstreams (docs/providers.md); the key encrypted."""

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
    deployments: str | None = None  # as on Project
    api_version: str | None = None


@dataclass(frozen=True, slots=True)
class Token(Governed):
    id: str
    token_hash: str
    display_prefix: str
    project_id: str
    label: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    max_requests: int | None = None
    request_count: int = 0
    cache_hit_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    rpm: int | None = None  # None: the deployment's default; 0: no per-token rate limit
    max_concurrency: int | None = None
    quota_used: int = 0  # the database quota counter; see quota_used()
    tpm: int | None = None  # tokens per minute; None: no limit


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: str
    outcome: str
    actor: str
    target_type: str = ""
    target_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    client_ip: str = ""
    ts: datetime | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    action: str | None = None
    target_id: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None  # cursor: rows with a smaller id (older)
    limit: int = 100


def quota_used(token: Token, *, count_cache_hits: bool) -> int:
    """Requests counted against ``max_requests`` so far, as the database knows them.

    Two sources, and the larger is right: ``quota_used`` (taken at admission by the database
    quota path, so it runs ahead of the events) and the event aggregates, which count every
    admitted request (cache hits included, proxy rejections not) once the events are written.
    The SQL twin of this rule is ``SqlStore.quota_sql``."""
    from_events = token.request_count
    if not count_cache_hits:
        from_events -= token.cache_hit_count
    return max(token.quota_used, from_events)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A stream entry the dispatcher could not record, kept with its raw payload and why."""

    stream_key: str
    entry_id: str
    reason: str  # see dispatcher.deadletter.Reason
    error: str
    deliveries: int
    consumer: str
    payload: bytes
    event_id: str = ""
    created_at: datetime | None = None
    replayed_at: datetime | None = None
    id: int | None = None
