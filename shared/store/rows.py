"""The shared rows of both stores: the transaction seam, column lists and row conversions."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.clock import from_epoch
from shared.errors import REJECTION_CODES
from shared.events import ACCEPTED, FINAL, UNPRICED, RequestEvent
from shared.money.cost import event_cost
from shared.money.prices import PriceBook
from shared.store.models import DeadLetter, Project, Token, UpstreamRow

Row = dict[str, Any]


class Tx(Protocol):
    """One connection inside a transaction. SQL uses ``%s`` placeholders in both dialects."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


PROJECT_COLUMNS = (
    "id, name, base_url, api_key_enc, is_active, created_at, updated_at, request_count, "
    "cache_hit_count, prompt_tokens, completion_tokens, last_used_at, kind, models, "
    "budget_usd, budget_tokens, budget_window, budget_calendar, budget_mode, deployments, "
    "api_version"
)
TOKEN_COLUMNS = (
    "id, token_hash, display_prefix, project_id, label, is_active, created_at, updated_at, "
    "expires_at, max_requests, request_count, cache_hit_count, prompt_tokens, "
    "completion_tokens, last_used_at, revoked_at, rpm, max_concurrency, quota_used, models, "
    "budget_usd, budget_tokens, budget_window, budget_calendar, budget_mode, tpm"
)
EVENT_COLUMNS = (
    "event_id, request_id, ts, project_id, token_id, method, path, status, model, duration_ms, "
    "upstream_ms, ttfb_ms, request_bytes, response_bytes, prompt_tokens, completion_tokens, "
    "total_tokens, cache_status, stream, error, client_ip, usage_source, phase, trace_id, span_id, "
    "cache_creation_tokens, cache_read_tokens, upstream, attempts, cached_tokens, "
    "reasoning_tokens, cost_picousd"
)
DEAD_LETTER_COLUMNS = (
    "id, stream_key, entry_id, event_id, reason, error, deliveries, consumer, payload, "
    "created_at, replayed_at"
)
BUDGET_COLUMNS = ("budget_usd", "budget_tokens", "budget_window", "budget_calendar", "budget_mode")
PROJECT_UPDATABLE = frozenset(
    {"name", "base_url", "api_key_enc", "is_active", "kind", "models", *BUDGET_COLUMNS}
    | {"deployments", "api_version"}
)
TOKEN_UPDATABLE = frozenset(
    {
        "label",
        "is_active",
        "expires_at",
        "max_requests",
        "revoked_at",
        "rpm",
        "max_concurrency",
        "models",
        *BUDGET_COLUMNS,
        "tpm",
    }
)


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """What the proxy needs to authorise a request: the token row and its project."""

    token: Token
    project: Project
    upstreams: tuple[UpstreamRow, ...] = ()  # none: the project's own base URL and key


@dataclass(slots=True)
class _Usage:
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_used: datetime | None = None

    def add(self, event: RequestEvent, ts: datetime, counted: bool = False) -> None:
        # request_count counts admitted requests; the proxy's own rejections are stored as rows
        # (and mark the token as used) but are not requests it served. ``counted``: the
        # request's accepted row already counted it; this final adds its usage, or takes the
        # count back if the request was refused after all (its limits or budget are checked
        # while its accepted record is on the way).
        admitted = event.error not in REJECTION_CODES
        if counted:
            self.requests -= not admitted
        else:
            self.requests += admitted
        self.cache_hits += admitted and event.cache_status == "hit"
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        if self.last_used is None or ts > self.last_used:
            self.last_used = ts


def project_from_row(row: Row) -> Project:
    return Project(**row)


def token_from_row(row: Row) -> Token:
    return Token(**row)


def event_params(event: RequestEvent) -> tuple[Any, ...]:
    return (
        event.event_id,
        event.request_id,
        from_epoch(event.ts),
        event.project_id or None,
        event.token_id or None,
        event.method,
        event.path,
        event.status,
        event.model,
        event.duration_ms,
        event.upstream_ms,
        event.ttfb_ms,
        event.request_bytes,
        event.response_bytes,
        event.prompt_tokens,
        event.completion_tokens,
        event.total_tokens,
        event.cache_status,
        event.stream,
        event.error,
        event.client_ip,
        event.usage_source,
        event.phase,
        event.trace_id,
        event.span_id,
        event.cache_creation_tokens,
        event.cache_read_tokens,
        event.upstream,
        event.attempts,
        event.cached_tokens,
        event.reasoning_tokens,
        None if event.cost_picousd == UNPRICED else event.cost_picousd,
    )


def event_from_row(row: Row) -> RequestEvent:
    values = dict(row)
    values["ts"] = row["ts"].timestamp()
    values["project_id"] = row["project_id"] or ""
    values["token_id"] = row["token_id"] or ""
    values["stream"] = bool(row["stream"])
    cost = row["cost_picousd"]
    values["cost_picousd"] = UNPRICED if cost is None else int(cost)
    return RequestEvent(**values)


def usage_by_owner(
    events: Sequence[RequestEvent],
) -> tuple[dict[str, _Usage], dict[str, _Usage]]:
    """Sum inserted events per token and per project, for the aggregate columns. Events of
    requests the proxy refused before forwarding (``REJECTION_CODES``) are not counted as
    requests: the aggregates count admitted requests, as token quotas do."""
    tokens: dict[str, _Usage] = {}
    projects: dict[str, _Usage] = {}
    completed = events.completed if isinstance(events, Inserted) else frozenset()
    for event in events:
        ts = from_epoch(event.ts)
        counted = event.event_id in completed
        if event.token_id:
            tokens.setdefault(event.token_id, _Usage()).add(event, ts, counted)
        if event.project_id:
            projects.setdefault(event.project_id, _Usage()).add(event, ts, counted)
    return tokens, projects


class Inserted(list[RequestEvent]):
    """The events a batch wrote: new rows, plus finals that replaced their accepted row (their
    ids in ``completed``: the accepted row already counted the request)."""

    def __init__(self, events: Sequence[RequestEvent] = (), completed: set[str] | None = None):
        super().__init__(events)
        self.completed: set[str] = completed if completed is not None else set()


def price_events(events: Sequence[RequestEvent], book: PriceBook) -> None:
    """Set each final's cost from the price in force at its time (in place: the exports and
    the rollups see the same figure as the row)."""
    for event in events:
        if event.phase == FINAL:
            event.cost_picousd = event_cost(event, book)


def one_per_request(events: Sequence[RequestEvent]) -> list[RequestEvent]:
    """A batch with one event per event_id, in order: a final wins over its accepted record
    (both may arrive in one batch), a repeat is dropped."""
    chosen: dict[str, RequestEvent] = {}
    for event in events:
        held = chosen.get(event.event_id)
        if held is None or (held.phase == ACCEPTED and event.phase == FINAL):
            chosen[event.event_id] = event
    if len(chosen) == len(events):
        return list(events)
    return list(chosen.values())


#: A final replacing its accepted row; nothing else is ever updated.
COMPLETE_EVENT_SQL = (
    "UPDATE request_events SET "
    + ", ".join(f"{c.strip()} = %s" for c in EVENT_COLUMNS.split(",")[1:])
    + " WHERE event_id = %s AND phase = 'accepted'"
)


def complete_params(event: RequestEvent) -> tuple[Any, ...]:
    params = event_params(event)
    return (*params[1:], params[0])


INSERT_EVENT_SQL = (
    f"INSERT INTO request_events ({EVENT_COLUMNS}) VALUES "
    f"({', '.join(['%s'] * len(EVENT_COLUMNS.split(',')))}) ON CONFLICT (event_id) DO NOTHING"
)


def usage_updates(
    inserted: Sequence[RequestEvent], latest_sql: str
) -> list[tuple[str, tuple[Any, ...]]]:
    """The UPDATEs that add inserted events to the token and project aggregates, in a fixed
    order (so concurrent writers never deadlock)."""
    tokens, projects = usage_by_owner(inserted)
    out = []
    for table, usage in (("tokens", tokens), ("projects", projects)):
        sql = (
            f"UPDATE {table} SET request_count = request_count + %s, "
            "cache_hit_count = cache_hit_count + %s, prompt_tokens = prompt_tokens + %s, "
            "completion_tokens = completion_tokens + %s, "
            f"last_used_at = COALESCE({latest_sql}(last_used_at, %s), %s) WHERE id = %s"
        )
        for owner_id, u in sorted(usage.items()):
            params = (
                u.requests,
                u.cache_hits,
                u.prompt_tokens,
                u.completion_tokens,
                u.last_used,
                u.last_used,
                owner_id,
            )
            out.append((sql, params))
    return out


class Tables(abc.ABC):
    """What every table's module needs of a store: transactions and its dialect's id rules."""

    #: SQL for "the later of two timestamps, either may be NULL".
    latest_sql = "MAX"
    #: Whether ids are UUID columns (Postgres), so writers check and normalise them first.
    uuid_ids = False

    @abc.abstractmethod
    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction on one connection; committed on normal exit, rolled back on error."""

    def valid_id(self, value: str) -> bool:
        """Whether ``value`` can be an id at all (Postgres rejects non-UUIDs in uuid columns)."""
        return bool(value)

    def lost_connection(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a pooled connection was dead (worth one retry on another)."""
        return False

    async def drop_broken_connections(self) -> None:
        """Test the idle pooled connections and replace the dead ones (no-op without a pool)."""
        return None

    async def _insert(self, table: str, row: object, fields: tuple[str, ...], back: str) -> Row:
        """INSERT ``row``'s ``fields`` into ``table``; the stored row (``back`` columns)."""
        marks = ", ".join(["%s"] * len(fields))
        async with self.transaction() as tx:
            stored = await tx.fetchone(
                f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({marks}) RETURNING {back}",
                tuple(getattr(row, f) for f in fields),
            )
        assert stored is not None
        return stored

    # Used across tables inside one transaction; the tables' modules implement them.
    @abc.abstractmethod
    async def _revoke(self, tx: Tx, where: str, value: str, now: datetime) -> int: ...

    @abc.abstractmethod
    async def insert_dead_letters(self, tx: Tx, items: Sequence[DeadLetter]) -> None: ...
