"""Usage reports read the daily rollups, never the raw events: for a mixed traffic of tokens,
models, days, cache hits, refusals and unpriced models, ``manage usage`` by model, day and
token and ``GET /v1/usage``'s figures equal what a scan of request_events adds up to."""

from __future__ import annotations

import time
from typing import Any

from shared.clock import new_id
from shared.config import Settings
from shared.crypto import load_keyring
from shared.errors import REJECTION_CODES
from shared.management import inputs as i
from shared.management.service import Management
from shared.money.amounts import picos_to_usd
from shared.store import SqlStore
from tests.pipeline_kit import seed

DAY = 86400.0
MODELS = ("gpt-4o-mini", "gpt-4o", "no-such-model-anywhere")  # the last one is unpriced
COUNTED = ("requests", "rejected", "cache_hits", "prompt_tokens", "completion_tokens", "unpriced")


def _scan_sql(by: str, dialect: str) -> str:
    """What the report would be from the raw rows: one pass over request_events."""
    refused = ", ".join(f"'{c}'" for c in sorted(REJECTION_CODES))
    day = "substr(ts, 1, 10)" if dialect == "sqlite" else "to_char(ts, 'YYYY-MM-DD')"
    key = {"model": "model", "token": "CAST(token_id AS TEXT)", "day": day}[by]
    admitted = f"(error IS NULL OR error NOT IN ({refused}))"
    return (
        f"SELECT {key} AS k, "
        f"SUM(CASE WHEN {admitted} THEN 1 ELSE 0 END) AS requests, "
        f"SUM(CASE WHEN {admitted} THEN 0 ELSE 1 END) AS rejected, "
        f"SUM(CASE WHEN {admitted} AND cache_status = 'hit' THEN 1 ELSE 0 END) AS cache_hits, "
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
        "SUM(CASE WHEN cost_picousd IS NULL THEN 1 ELSE 0 END) AS unpriced, "
        "COALESCE(SUM(cost_picousd), 0) AS cost "
        f"FROM request_events WHERE phase = 'final' AND project_id = %s GROUP BY {key}"
    )


async def _scanned(store: SqlStore, by: str, project_id: str) -> dict[str, dict[str, Any]]:
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetchall(_scan_sql(by, store.dialect), (project_id,))
    out = {}
    for row in rows:
        figures = {c: int(row[c]) for c in COUNTED}
        figures["priced_cost_usd"] = picos_to_usd(int(row["cost"]))
        out[str(row["k"])] = figures
    return out


async def test_reports_from_rollups_equal_a_scan_of_the_events(store: SqlStore) -> None:
    owners = await seed(store, tokens=3, name="rollup-vs-scan")
    start = time.time() - 3 * DAY
    events = []
    for n in range(90):
        events.append(
            owners.event(
                n,
                event_id=new_id(),
                ts=start + (n % 3) * DAY + n,
                model=MODELS[n % len(MODELS)],
                prompt_tokens=10 + n,
                completion_tokens=n % 7,
                cache_status="hit" if n % 5 == 0 else "miss",
                error="rate_limit_exceeded" if n % 11 == 0 else "",
                status=429 if n % 11 == 0 else 200,
            )
        )
    assert await store.record_events(events) == len(events)
    keyring = load_keyring(Settings.from_env({"ENCRYPTION_KEY": "k" * 43 + "="}))
    mgmt = Management(store=store, keyring=keyring, actor="test")
    for by in ("model", "day", "token"):
        report = await mgmt.usage_report(i.UsageQuery(project_id=owners.project_id, by=by))
        got = {
            row[by]: {c: row[c] for c in (*COUNTED, "priced_cost_usd")} for row in report["data"]
        }
        assert got == await _scanned(store, by, owners.project_id), by
        assert len(got) == 3  # three models, days and tokens: every group is compared
    by_model = await _scanned(store, "model", owners.project_id)
    assert by_model[MODELS[0]]["priced_cost_usd"] != "0" and by_model[MODELS[2]]["unpriced"] > 0
