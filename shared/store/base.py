"""The SQL both stores share; subclasses supply connections and their dialect's differences."""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared.clock import from_epoch, utcnow
from shared.errors import REJECTION_CODES
from shared.events import ACCEPTED, FINAL, UNPRICED, RequestEvent
from shared.money.cost import event_cost
from shared.money.prices import PriceBook, PriceRow
from shared.store.migrations import load
from shared.store.models import AuditEvent, AuditFilter, DeadLetter, Project, Token
from shared.store.prices import SELECT_PRICES_SQL, UPSERT_PRICE_SQL, book_of, price_params
from shared.store.rollups import (
    UPSERT_ROLLUP_SQL,
    RollupRow,
    rollup_from_row,
    rollup_params,
    rollups_of,
    select_rollups_sql,
)

Row = dict[str, Any]


class Tx(Protocol):
    """One connection inside a transaction. SQL uses ``%s`` placeholders in both dialects."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


PROJECT_COLUMNS = (
    "id, name, base_url, api_key_enc, is_active, created_at, updated_at, request_count, "
    "cache_hit_count, prompt_tokens, completion_tokens, last_used_at"
)
TOKEN_COLUMNS = (
    "id, token_hash, display_prefix, project_id, label, is_active, created_at, updated_at, "
    "expires_at, max_requests, request_count, cache_hit_count, prompt_tokens, "
    "completion_tokens, last_used_at, revoked_at, rpm, max_concurrency, quota_used"
)
EVENT_COLUMNS = (
    "event_id, request_id, ts, project_id, token_id, method, path, status, model, duration_ms, "
    "upstream_ms, ttfb_ms, request_bytes, response_bytes, prompt_tokens, completion_tokens, "
    "total_tokens, cache_status, stream, error, client_ip, usage_source, phase, cached_tokens, "
    "reasoning_tokens, cost_picousd"
)
DEAD_LETTER_COLUMNS = (
    "id, stream_key, entry_id, event_id, reason, error, deliveries, consumer, payload, "
    "created_at, replayed_at"
)
PROJECT_UPDATABLE = frozenset({"name", "base_url", "api_key_enc", "is_active"})
TOKEN_UPDATABLE = frozenset(
    {"label", "is_active", "expires_at", "max_requests", "revoked_at", "rpm", "max_concurrency"}
)


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """What the proxy needs to authorise a request: the token row and its project."""

    token: Token
    project: Project


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
        # request's accepted row already counted it; this final only adds its usage.
        admitted = event.error not in REJECTION_CODES
        self.requests += admitted and not counted
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


class SqlStore(abc.ABC):
    """Projects, tokens, audit and request events over SQL shared by SQLite and Postgres."""

    #: SQL for "the later of two timestamps, either may be NULL".
    latest_sql = "MAX"
    #: Whether ids are UUID columns (Postgres), so writers check and normalise them first.
    uuid_ids = False

    @abc.abstractmethod
    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction on one connection; committed on normal exit, rolled back on error."""

    @abc.abstractmethod
    async def open(self, *, wait: bool = False) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    #: the migrations folder and the schema_migrations table's column types
    dialect = "sqlite"
    migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )

    async def lock_for_migration(self, tx: Tx) -> None:  # noqa: B027 - a hook, no-op here
        """Serialise concurrent migrators (SQLite's BEGIN IMMEDIATE already does)."""

    async def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction; return the versions applied now."""
        applied: list[int] = []
        async with self.transaction() as tx:
            await self.lock_for_migration(tx)
            await tx.execute(self.migrations_table_sql)
            rows = await tx.fetchall("SELECT version FROM schema_migrations")
            done = {r["version"] for r in rows}
            for migration in load(self.dialect):
                if migration.version in done:
                    continue
                for statement in migration.statements():
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, utcnow()),
                )
                applied.append(migration.version)
        return applied

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    def valid_id(self, value: str) -> bool:
        """Whether ``value`` can be an id at all (Postgres rejects non-UUIDs in uuid columns)."""
        return bool(value)

    def lost_connection(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a pooled connection was dead (worth one retry on another)."""
        return False

    async def drop_broken_connections(self) -> None:
        """Test the idle pooled connections and replace the dead ones (no-op without a pool)."""
        return None

    async def ping(self) -> None:
        async with self.transaction(readonly=True) as tx:
            await tx.fetchone("SELECT 1 AS ok")

    # --- projects ---

    async def create_project(self, project: Project) -> Project:
        async with self.transaction() as tx:
            row = await tx.fetchone(
                f"INSERT INTO projects (id, name, base_url, api_key_enc, is_active, created_at, "
                f"updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {PROJECT_COLUMNS}",
                (
                    project.id,
                    project.name,
                    project.base_url,
                    project.api_key_enc,
                    project.is_active,
                    project.created_at,
                    project.updated_at,
                ),
            )
        assert row is not None
        return project_from_row(row)

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

    # --- tokens ---

    async def create_token(self, token: Token) -> Token:
        async with self.transaction() as tx:
            row = await tx.fetchone(
                "INSERT INTO tokens (id, token_hash, display_prefix, project_id, label, is_active, "
                "created_at, updated_at, expires_at, max_requests, rpm, max_concurrency) VALUES "
                f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {TOKEN_COLUMNS}",
                (
                    token.id,
                    token.token_hash,
                    token.display_prefix,
                    token.project_id,
                    token.label,
                    token.is_active,
                    token.created_at,
                    token.updated_at,
                    token.expires_at,
                    token.max_requests,
                    token.rpm,
                    token.max_concurrency,
                ),
            )
        assert row is not None
        return token_from_row(row)

    async def get_token(self, token_id: str) -> Token | None:
        if not self.valid_id(token_id):
            return None
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = %s", (token_id,)
            )
        return token_from_row(row) if row else None

    async def find_token(self, token_hash: str) -> TokenAuth | None:
        """The token with this hash and its project, in one query (the proxy's auth miss path)."""
        cols = ", ".join(f"t.{c.strip()} AS t_{c.strip()}" for c in TOKEN_COLUMNS.split(","))
        pcols = ", ".join(f"p.{c.strip()} AS p_{c.strip()}" for c in PROJECT_COLUMNS.split(","))
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                f"SELECT {cols}, {pcols} FROM tokens t JOIN projects p ON p.id = t.project_id "
                "WHERE t.token_hash = %s",
                (token_hash,),
            )
        if row is None:
            return None
        token = token_from_row({k[2:]: v for k, v in row.items() if k.startswith("t_")})
        project = project_from_row({k[2:]: v for k, v in row.items() if k.startswith("p_")})
        return TokenAuth(token, project)

    async def list_tokens(self, project_id: str | None = None) -> list[Token]:
        if project_id is not None and not self.valid_id(project_id):
            return []
        where, params = ("WHERE project_id = %s", (project_id,)) if project_id else ("", ())
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {TOKEN_COLUMNS} FROM tokens {where} ORDER BY created_at, id", params
            )
        return [token_from_row(r) for r in rows]

    async def update_token(self, token_id: str, changes: dict[str, Any]) -> Token | None:
        unknown = set(changes) - TOKEN_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not self.valid_id(token_id):
            return None
        sets = ", ".join(f"{name} = %s" for name in changes)
        sets = f"{sets}, updated_at = %s" if sets else "updated_at = %s"
        async with self.transaction() as tx:
            row = await tx.fetchone(
                f"UPDATE tokens SET {sets} WHERE id = %s RETURNING {TOKEN_COLUMNS}",
                (*changes.values(), utcnow(), token_id),
            )
        return token_from_row(row) if row else None

    async def revoke_token(self, token_id: str) -> int:
        if not self.valid_id(token_id):
            return 0
        async with self.transaction() as tx:
            return await self._revoke(tx, "id = %s", token_id, utcnow())

    async def revoke_project_tokens(self, project_id: str) -> int:
        """Revoke every active token of a project in one transaction; return how many."""
        if not self.valid_id(project_id):
            return 0
        async with self.transaction() as tx:
            return await self._revoke(tx, "project_id = %s", project_id, utcnow())

    async def _revoke(self, tx: Tx, where: str, value: str, now: datetime) -> int:
        return await tx.execute(
            f"UPDATE tokens SET is_active = %s, revoked_at = %s, updated_at = %s "
            f"WHERE {where} AND is_active = %s",
            (False, now, now, value, True),
        )

    # --- quota (the database path of the rate limiter) ---

    def quota_sql(self, *, count_cache_hits: bool) -> str:
        """SQL for the requests a token has used against its quota (see ``models.quota_used``),
        with one ``%s`` placeholder for a floor the caller knows (0: none)."""
        from_events = "request_count" if count_cache_hits else "request_count - cache_hit_count"
        return f"{self.latest_sql}(quota_used, {from_events}, %s)"

    async def take_quota(self, token_id: str, *, count_cache_hits: bool, floor: int = 0) -> bool:
        """Count one request against the token's quota if it has any left: one conditional
        UPDATE, so concurrent callers in any number of processes never admit more than
        ``max_requests``. ``floor`` is a usage known from elsewhere (the Redis counter last
        seen before Redis went away). A token without a limit is counted and admitted."""
        sql, params = self.take_quota_statement(token_id, count_cache_hits, floor)
        async with self.transaction() as tx:
            count = await tx.execute(sql, params)
        return count > 0

    def take_quota_statement(
        self, token_id: str, count_cache_hits: bool, floor: int
    ) -> tuple[str, tuple[Any, ...]]:
        used = self.quota_sql(count_cache_hits=count_cache_hits)
        return (
            f"UPDATE tokens SET quota_used = {used} + 1 "
            f"WHERE id = %s AND (max_requests IS NULL OR {used} < max_requests)",
            (floor, token_id, floor),
        )

    async def has_quota(self, token_id: str, *, count_cache_hits: bool, floor: int = 0) -> bool:
        """Whether the token has requests left, without counting one (for cache hits that do
        not count)."""
        used = self.quota_sql(count_cache_hits=count_cache_hits)
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT 1 AS ok FROM tokens "
                f"WHERE id = %s AND (max_requests IS NULL OR {used} < max_requests)",
                (token_id, floor),
            )
        return row is not None

    async def get_quota_used(self, token_id: str, *, count_cache_hits: bool) -> int | None:
        """Requests used against the quota as the database knows them (seeds Redis)."""
        used = self.quota_sql(count_cache_hits=count_cache_hits)
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                f"SELECT {used} AS used FROM tokens WHERE id = %s", (0, token_id)
            )
        return int(row["used"]) if row else None

    # --- audit ---

    async def add_audit(self, event: AuditEvent) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO audit_events (ts, actor, action, target_type, target_id, outcome, "
                "details, request_id, client_ip) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    event.ts or utcnow(),
                    event.actor,
                    event.action,
                    event.target_type,
                    event.target_id,
                    event.outcome,
                    json.dumps(event.details, sort_keys=True),
                    event.request_id,
                    event.client_ip,
                ),
            )

    async def list_audit(self, flt: AuditFilter) -> list[AuditEvent]:
        """Newest first; page with ``before_id`` set to the last id of the previous page."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value, op in (
            ("action", flt.action, "="),
            ("target_id", flt.target_id, "="),
            ("outcome", flt.outcome, "="),
            ("ts", flt.since, ">="),
            ("ts", flt.until, "<"),
            ("id", flt.before_id, "<"),
        ):
            if value is not None:
                clauses.append(f"{column} {op} %s")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                "SELECT id, ts, actor, action, target_type, target_id, outcome, details, "
                f"request_id, client_ip FROM audit_events {where} ORDER BY id DESC LIMIT %s",
                (*params, flt.limit),
            )
        out = []
        for row in rows:
            details = row["details"]
            row["details"] = json.loads(details) if isinstance(details, str) else details
            out.append(AuditEvent(**row))
        return out

    # --- change log (cache invalidation) ---

    async def record_changes(self, kind: str, target_ids: Sequence[str]) -> None:
        """Log that these tokens/projects changed; entries older than a day are pruned."""
        now = utcnow()
        async with self.transaction() as tx:
            for target_id in target_ids:
                await tx.execute(
                    "INSERT INTO changes (ts, kind, target_id) VALUES (%s, %s, %s)",
                    (now, kind, target_id),
                )
            await tx.execute("DELETE FROM changes WHERE ts < %s", (now - timedelta(days=1),))

    async def changes_since(self, after_id: int, limit: int = 1000) -> list[tuple[int, str, str]]:
        """``(id, kind, target_id)`` logged after ``after_id``, oldest first."""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                "SELECT id, kind, target_id FROM changes WHERE id > %s ORDER BY id LIMIT %s",
                (after_id, limit),
            )
        return [(int(r["id"]), r["kind"], r["target_id"]) for r in rows]

    async def last_change_id(self) -> int:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone("SELECT MAX(id) AS n FROM changes")
        return int(row["n"] or 0) if row else 0

    # --- request events ---

    async def record_events(self, events: Sequence[RequestEvent]) -> int:
        """Insert events (duplicates by event_id skipped) and add only the inserted ones to the
        token and project aggregates, all in one transaction. Returns the rows inserted."""
        return len(await self.record_batch(events))

    async def record_batch(
        self, events: Sequence[RequestEvent], dead_letters: Sequence[DeadLetter] = ()
    ) -> list[RequestEvent]:
        """One dispatcher batch in one transaction: the events (duplicates skipped), the
        aggregates of the ones actually inserted, and the batch's dead letters. Returns the
        events inserted now."""
        if not events and not dead_letters:
            return []
        async with self.transaction() as tx:
            if events:  # costed with the prices as this transaction sees them
                price_events(events, book_of(await tx.fetchall(SELECT_PRICES_SQL)))
            inserted = await self.insert_events(tx, events) if events else []
            if inserted:
                await self.apply_usage(tx, inserted)
                await self.apply_rollups(tx, inserted)
            if dead_letters:
                await self.insert_dead_letters(tx, dead_letters)
        return inserted

    async def insert_events(self, tx: Tx, events: Sequence[RequestEvent]) -> list[RequestEvent]:
        """Insert new rows; a final whose accepted row is there replaces it. Returns
        ``Inserted``: what changed, for the aggregates."""
        inserted = Inserted()
        for event in one_per_request(events):
            if await tx.execute(INSERT_EVENT_SQL, event_params(event)):
                inserted.append(event)
            elif event.phase == FINAL and await tx.execute(
                COMPLETE_EVENT_SQL, complete_params(event)
            ):
                inserted.append(event)
                inserted.completed.add(event.event_id)
        return inserted

    async def apply_usage(self, tx: Tx, inserted: Sequence[RequestEvent]) -> None:
        for sql, params in usage_updates(inserted, self.latest_sql):
            await tx.execute(sql, params)

    async def apply_rollups(self, tx: Tx, inserted: Sequence[RequestEvent]) -> None:
        for key, rollup in rollups_of(inserted):
            await tx.execute(UPSERT_ROLLUP_SQL, rollup_params(key, rollup))

    # --- prices and rollups ---

    async def price_book(self) -> PriceBook:
        """The shipped prices under the operator's, as events are costed now."""
        async with self.transaction(readonly=True) as tx:
            return book_of(await tx.fetchall(SELECT_PRICES_SQL))

    async def list_prices(self) -> list[PriceRow]:
        """The operator's rows (the shipped ones are in ``shared.money.prices``)."""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(SELECT_PRICES_SQL)
        return [r for r in book_of(rows).operator_rows()]

    async def set_prices(self, rows: Sequence[PriceRow]) -> None:
        """Add or replace rows (one per model, project and effective_from), all at once."""
        now = utcnow()
        async with self.transaction() as tx:
            for row in rows:
                await tx.execute(UPSERT_PRICE_SQL, price_params(row, now))

    async def list_rollups(
        self,
        *,
        project_id: str | None = None,
        token_id: str | None = None,
        since: datetime | None = None,
    ) -> list[RollupRow]:
        """Daily rollups, oldest first; ``since`` is rounded down to its day (UTC)."""
        sql = select_rollups_sql(
            project=project_id is not None, token=token_id is not None, since=since is not None
        )
        params = [v for v in (project_id, token_id) if v is not None]
        if since is not None:
            params.append(since.astimezone(UTC).date().isoformat())
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(sql, params)
        return [rollup_from_row(r) for r in rows]

    async def list_request_events(
        self,
        *,
        token_id: str | None = None,
        project_id: str | None = None,
        before_event_id: str | None = None,
        limit: int = 50,
    ) -> list[RequestEvent]:
        """A token's or a project's request events, newest first. Page with ``before_event_id``
        set to the last event_id of the previous page; an unknown cursor yields no rows."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("token_id", token_id), ("project_id", project_id)):
            if value is not None:
                if not self.valid_id(value):
                    return []
                clauses.append(f"{column} = %s")
                params.append(value)
        if before_event_id is not None:
            if not self.valid_id(before_event_id):
                return []
            # (ts, event_id) orders events totally, even when two share a timestamp.
            clauses.append(
                "(ts, event_id) < (SELECT c.ts, c.event_id FROM request_events c "
                "WHERE c.event_id = %s)"
            )
            params.append(before_event_id)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {EVENT_COLUMNS} FROM request_events {where} "
                "ORDER BY ts DESC, event_id DESC LIMIT %s",
                (*params, limit),
            )
        return [event_from_row(r) for r in rows]

    async def count_events(self, token_id: str | None = None) -> int:
        where, params = ("WHERE token_id = %s", (token_id,)) if token_id else ("", ())
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(f"SELECT COUNT(*) AS n FROM request_events {where}", params)
        return int(row["n"]) if row else 0

    async def list_events(
        self,
        *,
        limit: int = 20,
        token_id: str | None = None,
        project_id: str | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[RequestEvent]:
        """The newest ``limit`` events (oldest first), or with ``after`` = (ts, event_id) the
        oldest ones after that point (``manage events tail --follow``)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("token_id", token_id), ("project_id", project_id)):
            if value is not None:
                if not self.valid_id(value):
                    return []
                clauses.append(f"{column} = %s")
                params.append(value)
        if after is not None:
            clauses.append("(ts > %s OR (ts = %s AND event_id > %s))")
            params.extend((after[0], after[0], after[1]))
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        order = "ASC" if after is not None else "DESC"
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {EVENT_COLUMNS} FROM request_events {where} "
                f"ORDER BY ts {order}, event_id {order} LIMIT %s",
                (*params, limit),
            )
        events = [event_from_row(r) for r in rows]
        return events if after is not None else events[::-1]

    async def event_stats(self) -> Row:
        async with self.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT COUNT(*) AS events, MIN(ts) AS oldest_ts, MAX(ts) AS newest_ts "
                "FROM request_events"
            )
        return row or {}

    async def delete_events_before(self, cutoff: datetime, *, limit: int = 10_000) -> int:
        """Delete at most ``limit`` events older than ``cutoff`` (short transactions: callers
        loop until it returns less than ``limit``)."""
        async with self.transaction() as tx:
            return await tx.execute(
                "DELETE FROM request_events WHERE event_id IN (SELECT event_id FROM "
                "request_events WHERE ts < %s ORDER BY ts LIMIT %s)",
                (cutoff, limit),
            )

    # --- dead letters ---

    async def insert_dead_letters(self, tx: Tx, items: Sequence[DeadLetter]) -> None:
        now = utcnow()
        for item in items:
            await tx.execute(
                "INSERT INTO dead_letters (stream_key, entry_id, event_id, reason, error, "
                "deliveries, consumer, payload, created_at) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (stream_key, entry_id) DO NOTHING",
                (
                    item.stream_key,
                    item.entry_id,
                    item.event_id,
                    item.reason,
                    item.error,
                    item.deliveries,
                    item.consumer,
                    item.payload,
                    item.created_at or now,
                ),
            )

    async def list_dead_letters(
        self,
        *,
        ids: Sequence[int] = (),
        reason: str | None = None,
        include_replayed: bool = False,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Oldest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if ids:
            clauses.append(f"id IN ({', '.join(['%s'] * len(ids))})")
            params.extend(ids)
        if reason is not None:
            clauses.append("reason = %s")
            params.append(reason)
        if not include_replayed:
            clauses.append("replayed_at IS NULL")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY id LIMIT %s",
                (*params, limit),
            )
        return [DeadLetter(**{**r, "payload": bytes(r["payload"])}) for r in rows]

    async def mark_dead_letter_replayed(self, tx: Tx, dead_letter_id: int) -> None:
        await tx.execute(
            "UPDATE dead_letters SET replayed_at = %s WHERE id = %s", (utcnow(), dead_letter_id)
        )

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters not yet replayed, by reason."""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(
                "SELECT reason, COUNT(*) AS n FROM dead_letters WHERE replayed_at IS NULL "
                "GROUP BY reason ORDER BY reason"
            )
        return {r["reason"]: int(r["n"]) for r in rows}
