"""The tokens table, and the quota counted on it (the database path of the rate limiter)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.clock import utcnow
from shared.store.models import Token
from shared.store.rows import (
    BUDGET_COLUMNS,
    PROJECT_COLUMNS,
    TOKEN_COLUMNS,
    TOKEN_UPDATABLE,
    Tables,
    TokenAuth,
    Tx,
    project_from_row,
    token_from_row,
)
from shared.store.upstreams import of_project


class Tokens(Tables):
    async def create_token(self, token: Token) -> Token:
        fields: tuple[str, ...] = ("id", "token_hash", "display_prefix", "project_id", "label")
        fields += ("is_active",)
        fields += ("created_at", "updated_at", "expires_at", "max_requests", "rpm")
        fields += ("max_concurrency", "models", *BUDGET_COLUMNS, "tpm")
        return token_from_row(await self._insert("tokens", token, fields, TOKEN_COLUMNS))

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
            upstreams = await of_project(tx, row["p_id"])
        token = token_from_row({k[2:]: v for k, v in row.items() if k.startswith("t_")})
        project = project_from_row({k[2:]: v for k, v in row.items() if k.startswith("p_")})
        return TokenAuth(token, project, upstreams)

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
        """Revoke every token of a project not revoked yet in one transaction; return how many."""
        if not self.valid_id(project_id):
            return 0
        async with self.transaction() as tx:
            return await self._revoke(tx, "project_id = %s", project_id, utcnow())

    async def _revoke(self, tx: Tx, where: str, value: str, now: datetime) -> int:
        return await tx.execute(
            # a disabled token is revoked too: else it stays listed as live, and can be re-enabled
            f"UPDATE tokens SET is_active = %s, revoked_at = %s, updated_at = %s "
            f"WHERE {where} AND revoked_at IS NULL",
            (False, now, now, value),
        )

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
