"""JSON Schemas of the management API's replies: the views of shared.management, described once."""

from __future__ import annotations

from typing import Any

from proxy.manage.money_schemas import MONEY_SCHEMAS
from shared.kinds import KINDS

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_NUM: Schema = {"type": "number"}
_BOOL: Schema = {"type": "boolean"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_OPT_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
_OPT_INT: Schema = {"type": ["integer", "null"]}
_OPT_STR: Schema = {"type": ["string", "null"]}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(description: str, **properties: Schema) -> Schema:
    """An object whose every property is always present (the views never omit a key)."""
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_AZURE_FIELDS: dict[str, Schema] = {
    "deployments": {
        "type": "object",
        "additionalProperties": _STR,
        "description": "azure-openai: the deployment serving each model ({} : none).",
    },
    "api_version": {**_OPT_STR, "description": "azure-openai: the api-version sent."},
}
_PROJECT_FIELDS: dict[str, Schema] = {
    "id": _STR,
    "name": _STR,
    "base_url": _STR,
    "kind": {"enum": list(KINDS), "description": "Provider kind (docs/providers.md)."},
    "is_active": _BOOL,
    "request_count": _INT,
    "cache_hit_count": _INT,
    "prompt_tokens": _INT,
    "completion_tokens": _INT,
    "last_used_at": _OPT_TIME,
    "created_at": _TIME,
    "updated_at": _TIME,
    "models": {**_OPT_STR, "description": "The model scope (names and globs); null: any model."},
    "budget_usd": {**_OPT_STR, "description": "Dollars allowed per budget window, exact."},
    "budget_tokens": _OPT_INT,
    "budget_window": {"enum": ["5h", "1d", "1mo", None]},
    "budget_calendar": _BOOL,
    "budget_mode": {"enum": ["hard", "soft", None]},
    **_AZURE_FIELDS,
}
_TOKEN_FIELDS: dict[str, Schema] = {
    "id": _STR,
    "project_id": _STR,
    "label": _STR,
    "prefix": {"type": "string", "description": "The first characters of the token, then '…'."},
    "state": {"enum": ["active", "inactive", "revoked", "expired", "exhausted"]},
    "is_active": _BOOL,
    "expires_at": _OPT_TIME,
    "max_requests": _OPT_INT,
    "rpm": _OPT_INT,
    "max_concurrency": _OPT_INT,
    "models": {**_OPT_STR, "description": "The model scope (names and globs); null: any model."},
    "budget_usd": {**_OPT_STR, "description": "Dollars allowed per budget window, exact."},
    "budget_tokens": _OPT_INT,
    "budget_window": {"enum": ["5h", "1d", "1mo", None]},
    "budget_calendar": _BOOL,
    "budget_mode": {"enum": ["hard", "soft", None]},
    "tpm": _OPT_INT,
    "request_count": _INT,
    "remaining_requests": _OPT_INT,
    "cache_hit_count": _INT,
    "prompt_tokens": _INT,
    "completion_tokens": _INT,
    "last_used_at": _OPT_TIME,
    "revoked_at": _OPT_TIME,
    "created_at": _TIME,
}
_EVENT_FIELDS: dict[str, Schema] = {
    "event_id": _STR,
    "request_id": _STR,
    "ts": _TIME,
    "project_id": _OPT_STR,
    "token_id": _OPT_STR,
    "method": _STR,
    "path": _STR,
    "status": _INT,
    "model": _STR,
    "duration_ms": _NUM,
    "upstream_ms": _NUM,
    "ttfb_ms": _NUM,
    "request_bytes": _INT,
    "response_bytes": _INT,
    "prompt_tokens": _INT,
    "completion_tokens": _INT,
    "total_tokens": _INT,
    "cache_status": {"enum": ["", "hit", "miss", "bypass"]},
    "stream": _BOOL,
    "error": _STR,
    "client_ip": _STR,
    "usage_source": {
        "enum": ["", "clamped", "estimated"],
        "description": "Where the token counts come from: the upstream ('', or 'clamped' when "
        "absurd figures were bounded) or the proxy's estimate ('estimated').",
    },
    "cache_creation_tokens": {"type": "integer", "description": "Prompt-cache writes (Anthropic)."},
    "cache_read_tokens": {"type": "integer", "description": "Prompt-cache reads (Anthropic)."},
    "upstream": {
        "type": ["string", "null"],
        "description": "The id of the project upstream that served; null for the project's own.",
    },
    "attempts": {"type": "integer", "description": "Upstream calls made (retries included)."},
    "cached_tokens": _INT,
    "reasoning_tokens": _INT,
    "cost_usd": {
        "type": ["string", "null"],
        "pattern": r"^[0-9]+(\.[0-9]+)?$",
        "description": "Exact cost in dollars, as text; null when the model has no price.",
    },
}
_UPSTREAM_FIELDS: dict[str, Schema] = {
    "id": _STR,
    "project_id": _STR,
    "kind": {"enum": list(KINDS)},
    "base_url": _STR,
    "weight": _INT,
    "priority": _INT,
    "enabled": _BOOL,
    **_AZURE_FIELDS,
    "created_at": _TIME,
    "updated_at": _TIME,
}
_OPT_USD: Schema = {"type": ["string", "null"], "pattern": r"^[0-9]+(\.[0-9]+)?$"}
_USD: Schema = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
_BUDGET: Schema = _object(
    "One budget (or tokens-per-minute limit) in its current window. `used` is what admission "
    "counts against the limit: the settled `spent` plus the `reserved` estimates of requests "
    "in flight; `remaining` is the limit less that (null without a limit of that kind).",
    owner={"enum": ["token", "project"]},
    kind={"enum": ["budget", "tpm"]},
    window={"enum": ["1m", "5h", "1d", "1mo"]},
    calendar=_BOOL,
    mode={"enum": ["hard", "soft"]},
    limit_usd=_OPT_USD,
    spent_usd=_USD,
    reserved_usd=_USD,
    used_usd=_USD,
    remaining_usd=_OPT_USD,
    limit_tokens=_OPT_INT,
    spent_tokens=_INT,
    reserved_tokens=_INT,
    used_tokens=_INT,
    remaining_tokens=_OPT_INT,
    window_start=_TIME,
    resets_at=_TIME,
)
_NEXT_EVENT: Schema = {
    "type": ["string", "null"],
    "description": "Pass as before_event_id for the next page; null on the last page.",
}

_TAIL_FIELDS: dict[str, Schema] = {
    "ts": _TIME,
    "event_id": _STR,
    "request_id": _STR,
    "project_id": _STR,
    "token_id": _STR,
    "method": _STR,
    "path": _STR,
    "status": _INT,
    "model": _STR,
    "cache": _STR,
    "duration_ms": _NUM,
    "prompt_tokens": _INT,
    "completion_tokens": _INT,
    "usage_source": _STR,
    "cost_usd": _OPT_STR,
    "error": _STR,
}
_LETTER_FIELDS: dict[str, Schema] = {
    "id": _INT,
    "created_at": _OPT_TIME,
    "reason": {"enum": ["undecodable", "rejected", "max_deliveries"]},
    "entry_id": _STR,
    "event_id": _STR,
    "deliveries": _INT,
    "error": _STR,
    "replayed_at": _OPT_TIME,
    "payload": {"type": "string", "description": "The entry as stored (UTF-8, \\x escapes)."},
}
_GROUP: Schema = _object(
    "One consumer group of the stream.",
    name=_STR,
    consumers=_INT,
    pending=_INT,
    lag=_OPT_INT,
    last_delivered_id=_STR,
)

SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        "The OpenAI-style error envelope every failure is answered with.",
        error=_object(
            "What went wrong.",
            message=_STR,
            type=_STR,
            code=_STR,
            param={"type": "null"},
        ),
    ),
    "Project": _object("A project (its upstream key is never shown).", **_PROJECT_FIELDS),
    "ProjectDetail": _object(
        "A project with its upstreams (no key is ever shown) and its budget's spend.",
        **_PROJECT_FIELDS,
        upstreams={"type": "array", "items": _ref("Upstream")},
        budgets={"type": "array", "items": _ref("Budget")},
    ),
    "Budget": _BUDGET,
    "Upstream": _object(
        "One of a project's upstreams (its key is never shown).", **_UPSTREAM_FIELDS
    ),
    "UpstreamList": _object(
        "A project's upstreams, by priority.", data={"type": "array", "items": _ref("Upstream")}
    ),
    "UpstreamRemoved": _object("The upstream that was removed.", id=_STR, removed={"const": True}),
    "ProjectList": _object("All projects.", data={"type": "array", "items": _ref("Project")}),
    "ProjectActivation": _object(
        "The project after (de)activation.",
        **_PROJECT_FIELDS,
        tokens_revoked={"type": "integer", "description": "Tokens revoked along with it."},
    ),
    "ProjectDeleted": _object(
        "The project that was deleted.", id=_STR, name=_STR, deleted={"const": True}
    ),
    "ProjectTokensRevoked": _object(
        "How many of the project's tokens were revoked.", project_id=_STR, revoked=_INT
    ),
    "Token": _object("A token, masked.", **_TOKEN_FIELDS),
    "TokenDetail": _object(
        "A token, masked, with what its budget and TPM have spent and have left.",
        **_TOKEN_FIELDS,
        budgets={"type": "array", "items": _ref("Budget")},
    ),
    "TokenList": _object("Tokens, oldest first.", data={"type": "array", "items": _ref("Token")}),
    "NewToken": _object(
        "A new token. `token` is the secret, shown in full only in this reply.",
        **_TOKEN_FIELDS,
        token=_STR,
    ),
    "RotatedToken": _object(
        "The new token (`token`, shown in full only in this reply) and the id of the one it "
        "replaces, which keeps working until the grace period ends.",
        **_TOKEN_FIELDS,
        token=_STR,
        replaces=_STR,
    ),
    "RevokedToken": _object(
        "The token after revocation.",
        **_TOKEN_FIELDS,
        revoked={"type": "integer", "description": "1 if it was active until now, else 0."},
    ),
    "RequestEvent": _object("One proxied request.", **_EVENT_FIELDS),
    "TokenUsage": _object(
        "A token's totals and a page of its request events, newest first.",
        token=_ref("Token"),
        events={"type": "array", "items": _ref("RequestEvent")},
        next_before_event_id=_NEXT_EVENT,
    ),
    "ProjectUsage": _object(
        "A project's totals and a page of its request events, newest first.",
        project=_ref("Project"),
        events={"type": "array", "items": _ref("RequestEvent")},
        next_before_event_id=_NEXT_EVENT,
    ),
    "CachePurged": _object(
        "What a purge removed. `purged` is null when only per-worker caches were told to purge.",
        purged={"type": ["integer", "null"]},
        backend={"enum": ["in-memory", "redis"]},
        project_id=_OPT_STR,
        path_prefix=_OPT_STR,
    ),
    "KeysRotated": _object(
        "Upstream keys re-encrypted, and the id of the key now in use.", rotated=_INT, key_id=_STR
    ),
    "AuditEvent": _object(
        "One management action or security event.",
        id=_INT,
        ts=_TIME,
        actor=_STR,
        action=_STR,
        target_type=_STR,
        target_id=_STR,
        outcome={"enum": ["success", "failure"]},
        details={"type": "object"},
        request_id=_STR,
        client_ip=_STR,
    ),
    "AuditPage": _object(
        "A page of the audit log, newest first.",
        data={"type": "array", "items": _ref("AuditEvent")},
        next_before_id={
            "type": ["integer", "null"],
            "description": "Pass as before_id for the next page; null on the last page.",
        },
    ),
    "EventTail": _object(
        "Recorded request events, oldest first.",
        data={"type": "array", "items": _object("One request event.", **_TAIL_FIELDS)},
    ),
    "EventStats": {
        **_object(
            "Recorded events, dead letters by reason, and the event bus.",
            events=_INT,
            oldest_event=_OPT_STR,
            newest_event=_OPT_STR,
            dead_letters={"type": "object", "additionalProperties": _INT},
            event_bus={"enum": ["in-memory", "redis-streams"]},
            stream=_object(
                "The Redis stream (with LLM_PROXY_EVENT_BUS=redis-streams).",
                key=_STR,
                length=_INT,
                groups={"type": "array", "items": _GROUP},
            ),
        ),
        "required": ["events", "oldest_event", "newest_event", "dead_letters", "event_bus"],
    },
    "DeadLetterList": _object(
        "Dead letters, oldest first.",
        data={"type": "array", "items": _object("One dead letter.", **_LETTER_FIELDS)},
    ),
    "DeadLettersRequeued": _object(
        "The dead letters handed back to the stream.",
        requeued=_INT,
        ids={"type": "array", "items": _INT},
        stream=_STR,
    ),
}

SCHEMAS.update(MONEY_SCHEMAS)
