"""The prices and usage_rollups tables: the operator's rates, and the daily totals read back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from shared.clock import utcnow
from shared.money.prices import PriceBook, PriceRow
from shared.store.prices import SELECT_PRICES_SQL, UPSERT_PRICE_SQL, book_of, price_params
from shared.store.rollups import RollupRow, rollup_from_row, select_rollups_sql
from shared.store.rows import Tables


class Money(Tables):
    async def price_book(self) -> PriceBook:
        """The shipped prices under the operator's, as events are costed now."""
        async with self.transaction(readonly=True) as tx:
            return book_of(await tx.fetchall(SELECT_PRICES_SQL))

    async def list_prices(self) -> list[PriceRow]:
        """The operator's rows (the shipped ones are in ``shared.money.prices``)."""
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(SELECT_PRICES_SQL)
        return book_of(rows).operator_rows()

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
        params: list[object] = [v for v in (project_id, token_id) if v is not None]
        if since is not None:
            params.append(since.astimezone(UTC).date().isoformat())
        async with self.transaction(readonly=True) as tx:
            rows = await tx.fetchall(sql, params)
        return [rollup_from_row(r) for r in rows]
