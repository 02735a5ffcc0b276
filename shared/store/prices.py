"""The operator's prices table, and the price book a batch of events is costed with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.money.prices import OPERATOR, PriceBook, PriceRow, shipped_rows

PRICE_COLUMNS = (
    "id, model, project_id, effective_from, input_micros, cached_input_micros, output_micros, "
    "reasoning_micros, cache_write_micros, created_at"
)
SELECT_PRICES_SQL = f"SELECT {PRICE_COLUMNS} FROM prices ORDER BY model, project_id, effective_from"
#: Setting a row again at the same model, project and time replaces its rates.
UPSERT_PRICE_SQL = (
    "INSERT INTO prices (model, project_id, effective_from, input_micros, cached_input_micros, "
    "output_micros, reasoning_micros, cache_write_micros, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (model, project_id, effective_from) DO UPDATE SET "
    "input_micros = excluded.input_micros, cached_input_micros = excluded.cached_input_micros, "
    "output_micros = excluded.output_micros, reasoning_micros = excluded.reasoning_micros, "
    "cache_write_micros = excluded.cache_write_micros, created_at = excluded.created_at"
)


def price_from_row(row: dict[str, Any]) -> PriceRow:
    when = row["effective_from"]
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return PriceRow(
        model=row["model"],
        input=int(row["input_micros"]),
        output=int(row["output_micros"]),
        effective_from=when,
        cached_input=_opt(row["cached_input_micros"]),
        reasoning=_opt(row["reasoning_micros"]),
        cache_write=_opt(row["cache_write_micros"]),
        project_id=row["project_id"] or None,
        source=OPERATOR,
    )


def price_params(row: PriceRow, now: datetime) -> tuple[Any, ...]:
    return (
        row.model,
        row.project_id or "",
        row.effective_from,
        row.input,
        row.cached_input,
        row.output,
        row.reasoning,
        row.cache_write,
        now,
    )


def book_of(rows: list[dict[str, Any]]) -> PriceBook:
    """The shipped rows under the operator's."""
    return PriceBook([*shipped_rows(), *(price_from_row(r) for r in rows)])


def _opt(value: Any) -> int | None:
    return None if value is None else int(value)
