"""Daily usage rollups per project, token and model, added in the events' own transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any

from shared.errors import REJECTION_CODES
from shared.events import FINAL, UNPRICED, RequestEvent

RollupKey = tuple[str, str, str, str]  # project_id, day, token_id, model


@dataclass(slots=True)
class Rollup:
    """What one (project, day, token, model) adds up to. ``cost_picousd`` sums the priced
    requests only; ``unpriced`` counts the others (their cost is unknown, not zero)."""

    requests: int = 0
    rejected: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_picousd: int = 0
    unpriced: int = 0

    def add(self, event: RequestEvent) -> None:
        admitted = event.error not in REJECTION_CODES
        self.requests += admitted
        self.rejected += not admitted
        self.cache_hits += admitted and event.cache_status == "hit"
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        self.cached_tokens += event.cached_tokens
        self.reasoning_tokens += event.reasoning_tokens
        self.total_tokens += event.total_tokens
        if event.cost_picousd == UNPRICED:
            self.unpriced += 1
        else:
            self.cost_picousd += event.cost_picousd


COUNTS = tuple(f.name for f in fields(Rollup))


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def rollups_of(inserted: Sequence[RequestEvent]) -> list[tuple[RollupKey, Rollup]]:
    """The rollups of the events a batch wrote, in key order (concurrent writers then take
    the rows' locks in one order and never deadlock). Only finals count: an accepted record
    carries no usage, and its final (which replaces it) is counted when it comes."""
    out: dict[RollupKey, Rollup] = {}
    for event in inserted:
        if event.phase != FINAL:
            continue
        key = (event.project_id, day_of(event.ts), event.token_id, event.model)
        rollup = out.get(key)
        if rollup is None:
            rollup = out[key] = Rollup()
        rollup.add(event)
    return sorted(out.items())


UPSERT_ROLLUP_SQL = (
    f"INSERT INTO usage_rollups (project_id, day, token_id, model, {', '.join(COUNTS)}) "
    f"VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(COUNTS))}) "
    "ON CONFLICT (project_id, day, token_id, model) DO UPDATE SET "
    + ", ".join(f"{c} = usage_rollups.{c} + excluded.{c}" for c in COUNTS)
)


def rollup_params(key: RollupKey, rollup: Rollup) -> tuple[Any, ...]:
    return (*key, *(getattr(rollup, c) for c in COUNTS))


@dataclass(frozen=True, slots=True)
class RollupRow:
    """One stored rollup, as ``manage usage`` reads it."""

    project_id: str
    day: date
    token_id: str
    model: str
    totals: Rollup


def rollup_from_row(row: dict[str, Any]) -> RollupRow:
    day = row["day"]
    if isinstance(day, str):
        day = date.fromisoformat(day[:10])
    elif isinstance(day, datetime):
        day = day.date()
    counts = Rollup(**{c: int(row[c]) for c in COUNTS})  # Postgres sums cost as numeric
    return RollupRow(row["project_id"], day, row["token_id"], row["model"], counts)


def select_rollups_sql(*, project: bool, token: bool, since: bool) -> str:
    clauses = [c for c, on in (("project_id = %s", project), ("token_id = %s", token)) if on]
    if since:
        clauses.append("day >= %s")
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    return (
        f"SELECT project_id, day, token_id, model, {', '.join(COUNTS)} FROM usage_rollups "
        f"{where} ORDER BY day, project_id, token_id, model"
    )
