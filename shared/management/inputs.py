"""Every management operation's inputs, declared once; the table of operations.

A new field (a budget, a model scope) is one ``inp()`` line here, plus the store column it fills
and its view: the service, the API, its OpenAPI document, the remote client and the CLI all read
these declarations. Token limits sit in one mixin so that generation and update take the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.deployments import check_api_version, check_deployments, stored_deployments
from shared.errors import UserError
from shared.kinds import KINDS, OPENAI
from shared.management.checks import (
    DEAD_LETTER_REASONS,
    DEFAULT_BASE_URL,
    MAX_PAGE,
    check_api_key,
    check_base_url,
    check_name,
    check_path_prefix,
    zero_is_none,
)
from shared.management.fields import inp
from shared.money.amounts import AmountError, picos_to_usd, usd_to_picos
from shared.money.budgets import BUDGET_WINDOWS
from shared.scopes import check_models

MAX_ROW_ID = 2**63 - 1  # the largest id a BIGINT (and SQLite INTEGER) holds
MAX_INT = 2**31 - 1  # the largest value a Postgres INTEGER column (rpm, max_concurrency) holds
_INPUT = {"frozen": True, "slots": True, "kw_only": True}

_PROJECT_DOC = "The project's id or its name."
_TOKEN_DOC = "The token's id (not the token itself) or its label."
_KEY_DOC = "The project's upstream API key. Stored encrypted; never returned."
_UPSTREAM_KEY_DOC = "This upstream's API key. Stored encrypted; never returned."
_LIMIT_DOC = "How many to list (a page)."
_MODELS_DOC = (
    "The models it may use: comma-separated names and globs ('gpt-4o-mini,gpt-4.1-*'); "
    "'' allows every model."
)


def _models() -> Any:
    return inp(
        "string", _MODELS_DOC, default=None, nullable=True, check=check_models, stored=_or_none
    )


def _or_none(value: str) -> str | None:
    return value or None


def check_budget_usd(text: str) -> str:
    """Exact dollars (``"25"``, ``"0.50"``), normalised; ``""`` removes the dollar budget."""
    if not text.strip():
        return ""
    try:
        picos = usd_to_picos(text.strip())
    except AmountError:
        picos = -1
    if picos <= 0 or picos >= 2**63:
        raise UserError(f"budget usd must be a positive amount of dollars, got {text!r}")
    return picos_to_usd(picos) or ""


@dataclass(**_INPUT)
class BudgetInputs:
    """A budget, for a token or a project (all optional; update changes those given)."""

    budget_usd: str | None = inp(
        "string",
        "Dollars allowed per budget window, exact ('25', '0.50'); '' removes it.",
        default=None,
        nullable=True,
        check=check_budget_usd,
        stored=_or_none,
    )
    budget_tokens: int | None = inp(
        "integer",
        "Tokens (prompt + completion) allowed per budget window; 0 removes it.",
        default=None,
        nullable=True,
        minimum=0,
        maximum=10**15,
        stored=zero_is_none,
    )
    budget_window: str | None = inp(
        "string",
        "The budget's window: 5h, 1d or 1mo (rolling, unless --budget-calendar). Default 1mo.",
        default=None,
        nullable=True,
        choices=BUDGET_WINDOWS,
    )
    budget_calendar: bool | None = inp(
        "boolean",
        "Count the budget per calendar block (UTC day, month, 5-hour block) instead of rolling.",
        default=None,
        nullable=True,
        flag="--budget-calendar/--budget-rolling",
    )
    budget_mode: str | None = inp(
        "string",
        "hard: refuse (429 budget_exceeded) once spent; soft: allow, flagged. Default hard.",
        default=None,
        nullable=True,
        choices=("hard", "soft"),
    )


_WHEN = ": ISO 8601 (UTC unless an offset is given) or a span back from now (1h, 7d)."


def _project_ref(*, argument: bool = True) -> Any:
    return inp("string", _PROJECT_DOC, argument=argument)


def _token_ref() -> Any:
    return inp("string", _TOKEN_DOC, argument=True)


def _kind(*, default: str | None) -> Any:
    return inp(
        "string",
        "Provider kind: where the key goes, which headers pass, how paths map (docs/providers.md).",
        default=default,
        choices=KINDS,
    )


def _weight(default: int | None) -> Any:
    return inp(
        "integer",
        "Share of traffic among the upstreams of its priority (0: only when the others fail).",
        default=default,
        minimum=0,
        maximum=1000,
    )


def _priority(default: int | None) -> Any:
    return inp(
        "integer",
        "Failover order: lower numbers are tried first; higher ones when those fail.",
        default=default,
        minimum=-1000,
        maximum=1000,
    )


def _deployments() -> Any:
    return inp(
        "mapping",
        "azure-openai: the deployment serving each model, MODEL=DEPLOYMENT (repeat the option); "
        "a model not named is its own deployment. Given, it replaces the whole table; "
        "--deployment '' empties it.",
        default=None,
        nullable=True,
        flag="--deployment",
        metavar="MODEL=DEPLOYMENT",
        check=check_deployments,
        stored=stored_deployments,
    )


def _api_version() -> Any:
    return inp(
        "string",
        "azure-openai: the api-version sent, in place of the client's (2024-10-21); '' removes "
        "it (then the client's, else AZURE_OPENAI_API_VERSION).",
        default=None,
        nullable=True,
        check=check_api_version,
        stored=_or_none,
    )


def _page(default: int) -> Any:
    return inp("integer", _LIMIT_DOC, default=default, minimum=1, maximum=MAX_PAGE)


@dataclass(**_INPUT)
class NoInput:
    """An operation that takes nothing."""


# --- projects ---


@dataclass(**_INPUT)
class ProjectRef:
    project_id: str = _project_ref()


@dataclass(**_INPUT)
class CreateProject(BudgetInputs):
    name: str = inp("string", "Unique project name (1-200 printable characters).", check=check_name)
    base_url: str = inp(
        "string",
        "Upstream base URL, as an OpenAI SDK's base_url.",
        default=DEFAULT_BASE_URL,
        check=check_base_url,
    )
    api_key: str | None = inp(
        "string",
        _KEY_DOC,
        default=None,
        secret=True,
        envvar="UPSTREAM_API_KEY",
        check=check_api_key,
    )
    kind: str = _kind(default=OPENAI)
    models: str | None = _models()
    deployments: dict[str, str] | None = _deployments()
    api_version: str | None = _api_version()


@dataclass(**_INPUT)
class UpdateProject(BudgetInputs):
    project_id: str = _project_ref()
    name: str | None = inp("string", "New unique name.", default=None, check=check_name)
    base_url: str | None = inp("string", "New base URL.", default=None, check=check_base_url)
    api_key: str | None = inp(
        "string", "New upstream API key.", default=None, secret=True, check=check_api_key
    )
    kind: str | None = _kind(default=None)
    models: str | None = _models()
    deployments: dict[str, str] | None = _deployments()
    api_version: str | None = _api_version()


# --- a project's several upstreams ---


@dataclass(**_INPUT)
class AddUpstream:
    project_id: str = _project_ref(argument=False)
    base_url: str = inp("string", "The upstream's base URL.", check=check_base_url)
    api_key: str | None = inp(
        "string", _UPSTREAM_KEY_DOC, default=None, secret=True, check=check_api_key
    )
    kind: str = _kind(default=OPENAI)
    weight: int = _weight(1)
    priority: int = _priority(0)
    deployments: dict[str, str] | None = _deployments()
    api_version: str | None = _api_version()


@dataclass(**_INPUT)
class ListUpstreams:
    project_id: str = _project_ref(argument=False)


def _upstream_ref() -> Any:
    return inp("string", "The upstream's id.", argument=True)


def _upstream_project() -> Any:
    return inp(
        "string",
        "The project the upstream belongs to (id or name); given, an upstream of another "
        "project is refused.",
        default=None,
    )


@dataclass(**_INPUT)
class UpstreamRef:
    upstream_id: str = _upstream_ref()
    project_id: str | None = _upstream_project()


@dataclass(**_INPUT)
class UpdateUpstream:
    upstream_id: str = _upstream_ref()
    project_id: str | None = _upstream_project()
    base_url: str | None = inp("string", "New base URL.", default=None, check=check_base_url)
    api_key: str | None = inp(
        "string", "New upstream API key.", default=None, secret=True, check=check_api_key
    )
    kind: str | None = _kind(default=None)
    weight: int | None = _weight(None)
    priority: int | None = _priority(None)
    enabled: bool | None = inp(
        "boolean",
        "Take the upstream out of (--disabled) or back into (--enabled) rotation.",
        default=None,
        flag="--enabled/--disabled",
    )
    deployments: dict[str, str] | None = _deployments()
    api_version: str | None = _api_version()


@dataclass(**_INPUT)
class DeactivateProject:
    project_id: str = _project_ref()
    revoke_tokens: bool = inp("boolean", "Also revoke every token of the project.", default=False)


@dataclass(**_INPUT)
class ProjectUsage:
    project_id: str = _project_ref()
    limit: int = _page(20)
    before_event_id: str | None = inp(
        "string", "Page: events older than this one (next_before_event_id).", default=None
    )


# --- tokens ---


@dataclass(**_INPUT)
class TokenLimits(BudgetInputs):
    """What a token may do; generation sets them, update changes those given."""

    max_requests: int | None = inp(
        "integer",
        "Requests allowed in the token's lifetime (a positive integer); none for no limit.",
        default=None,
        nullable=True,
        minimum=1,
        maximum=MAX_ROW_ID,
        invalid="max requests must be a positive integer (omit it for no limit)",
    )
    rpm: int | None = inp(
        "integer",
        "Requests per minute for this token (sliding window); 0 = no per-token rate limit. "
        "Omitted: DISTRIBUTED_RATE_LIMIT_MAX applies when distributed limits are on.",
        default=None,
        nullable=True,
        minimum=0,
        maximum=MAX_INT,
        invalid=f"rpm must be 0 (no per-token rate limit) or a positive integer up to {MAX_INT}",
    )
    max_concurrency: int | None = inp(
        "integer",
        "Requests this token may have in flight at once; 0 = no cap.",
        default=None,
        nullable=True,
        minimum=0,
        maximum=MAX_INT,
        invalid=f"max concurrency must be 0 (no cap) or a positive integer up to {MAX_INT}",
        stored=zero_is_none,
    )
    models: str | None = _models()
    tpm: int | None = inp(
        "integer",
        "Tokens (prompt + completion) per minute for this token; 0 removes the limit.",
        default=None,
        nullable=True,
        minimum=0,
        maximum=10**15,
        invalid="tpm must be 0 (no limit) or a positive integer",
        stored=zero_is_none,
    )


_DURATION_DOC = (
    "Lifetime from now: hours (24) or with a unit (30m, 24h, 7d); 'never' for no expiry."
)


def _expires_at() -> Any:
    # For `llm-proxy apply`, which must set the very instant a state file names (a duration is
    # counted from now, so a second apply would see a different expiry); not a CLI option.
    return inp(
        "date-time",
        "The instant the token expires (ISO 8601); given, it takes the place of duration.",
        default=None,
        cli=False,
    )


@dataclass(**_INPUT)
class GenerateToken(TokenLimits):
    project_id: str = _project_ref(argument=False)
    duration: str = inp("duration", _DURATION_DOC, default="24")
    expires_at: datetime | None = _expires_at()
    label: str = inp("string", "A note to recognise the token by.", default="")


@dataclass(**_INPUT)
class ListTokens:
    project_id: str | None = inp("string", "Only this project's tokens.", default=None)


@dataclass(**_INPUT)
class TokenRef:
    token_id: str = _token_ref()


@dataclass(**_INPUT)
class UpdateToken(TokenLimits):
    token_id: str = _token_ref()
    activate: bool | None = inp(
        "boolean",
        "true reactivates (also un-revokes), false disables.",
        default=None,
        nullable=True,
        flag="--activate/--deactivate",
    )
    unlimited: bool = inp("boolean", "Remove the request limit.", default=False)
    duration: str | None = inp("duration", _DURATION_DOC, default=None)
    expires_at: datetime | None = _expires_at()
    label: str | None = inp("string", "New label.", default=None)


@dataclass(**_INPUT)
class TokenUsage:
    token_id: str = _token_ref()
    limit: int = _page(20)
    before_event_id: str | None = inp(
        "string", "Page: events older than this one (next_before_event_id).", default=None
    )


@dataclass(**_INPUT)
class RotateToken:
    token_id: str = _token_ref()
    grace: str = inp(
        "duration",
        "How long the old token keeps working (30m, 1h, 1d); the new one works at once.",
        default="1h",
    )


# --- cache, keys, audit ---


@dataclass(**_INPUT)
class PurgeCache:
    project_id: str | None = inp(
        "string", "Only this project's entries (id or name).", default=None, nullable=True
    )
    path_prefix: str | None = inp(
        "string",
        "Only entries whose path starts with this (/v1/models).",
        default=None,
        nullable=True,
        check=check_path_prefix,
    )


@dataclass(**_INPUT)
class AuditQuery:
    action: str | None = inp("string", "Only this action, e.g. token.revoke.", default=None)
    target_id: str | None = inp(
        "string", "Only entries about this project or token id.", default=None
    )
    outcome: str | None = inp(
        "string", "Only this outcome.", default=None, choices=("success", "failure")
    )
    since: datetime | None = inp(
        "date-time",
        "Entries at or after this time: ISO 8601 (UTC) or back from now (1h).",
        default=None,
    )
    until: datetime | None = inp(
        "date-time", "Entries before this time: ISO 8601 (UTC) or back from now (1h).", default=None
    )
    before_id: int | None = inp(
        "integer",
        "Page: entries older than this id (next_before_id).",
        default=None,
        minimum=1,
        maximum=MAX_ROW_ID,
    )
    limit: int = _page(100)


# --- the event pipeline ---


@dataclass(**_INPUT)
class TailEvents:
    limit: int = inp(
        "integer", "How many of the latest events.", default=20, minimum=1, maximum=10_000
    )
    token_id: str | None = inp("string", "Only this token's events (id or label).", default=None)
    project_id: str | None = inp("string", "Only this project's (id or name).", default=None)
    after: datetime | None = inp(
        "date-time",
        "Only events after this time: ISO 8601 or a span back from now (10m).",
        default=None,
        flag="--since",
    )
    after_event_id: str | None = inp(
        "string", "With after: only events after this one at that time.", default=None, cli=False
    )


@dataclass(**_INPUT)
class DeadLetterQuery:
    reason: str | None = inp(
        "string", "Only this reason.", default=None, choices=DEAD_LETTER_REASONS
    )
    include_replayed: bool = inp("boolean", "Also those already replayed.", default=False)
    limit: int = inp("integer", "How many to list.", default=100, minimum=1, maximum=10_000)


@dataclass(**_INPUT)
class RequeueDeadLetters:
    ids: list[int] | None = inp("integers", "Only these dead letters.", default=None)
    reason: str | None = inp(
        "string", "Only this reason.", default=None, choices=DEAD_LETTER_REASONS
    )
    limit: int = inp("integer", "How many at most.", default=1000, minimum=1, maximum=100_000)


# --- money: prices and usage ---

_RATE = "Dollars per million {} tokens, as text (0.15)."


def _rate(what: str, **meta: Any) -> Any:
    return inp("string", _RATE.format(what), **meta)


@dataclass(**_INPUT)
class ListPrices:
    model: str | None = inp("string", "Only this model's rows.", default=None)
    shipped: bool = inp("boolean", "Also the rows shipped with the package.", default=False)


@dataclass(**_INPUT)
class SetPrice:
    model: str = inp("string", "The model as the upstream names it (gpt-4o-mini).", argument=True)
    input: str = _rate("input")
    output: str = _rate("output (and reasoning, unless --reasoning)")
    cached_input: str | None = _rate(
        "input read from the provider's cache (default: the input rate)", default=None
    )
    reasoning: str | None = _rate("reasoning (default: the output rate)", default=None)
    cache_write: str | None = _rate("cache-write (Anthropic)", default=None)
    effective_from: datetime | None = inp(
        "date-time", "From when the rates apply" + _WHEN + " Default: now.", default=None
    )
    project_id: str | None = inp(
        "string", "Only for this project (id or name): a negotiated rate.", default=None
    )


@dataclass(**_INPUT)
class ImportPrices:
    data: str = inp(
        "string",
        'Rows as `prices export` writes them: JSON ({"prices": [...]}) or CSV with a header '
        "of model,input,cached_input,output,reasoning,cache_write,effective_from,project_id.",
        default="",
        cli=False,  # the CLI reads it from the file it is given
    )


@dataclass(**_INPUT)
class UnpricedQuery:
    project_id: str | None = inp("string", "Only this project's (id or name).", default=None)
    since: datetime | None = inp(
        "date-time", "Only requests on or after this day" + _WHEN, default=None
    )


@dataclass(**_INPUT)
class UsageQuery:
    project_id: str | None = inp("string", "A project (id or name).", default=None)
    token_id: str | None = inp("string", "A token (id or label).", default=None)
    by: str = inp(
        "string",
        "One row per model, per day, or per token.",
        default="model",
        choices=("model", "day", "token"),
    )
    since: datetime | None = inp(
        "date-time", "From this day on (UTC)" + _WHEN + " Default: all.", default=None
    )
