"""``GET /v1/usage``: the calling token's own usage, cost and what is left of its budgets,
TPM and quota, answered by the proxy from the rollups and the budget counters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from proxy.auth import Credential
from shared.clock import utcnow
from shared.management.checks import parse_since
from shared.management.spend import spend_views
from shared.money.amounts import picos_to_usd
from shared.store import SqlStore
from shared.store.rollups import COUNTS, Rollup

PATH = "/v1/usage"
DEFAULT_SPAN = timedelta(days=30)


async def usage_of(
    store: SqlStore, cred: Credential, query: bytes, *, count_cache_hits: bool
) -> dict[str, Any]:
    """The reply; ``?since=7d`` (or an ISO time) chooses the first day, 30 days by default."""
    now = utcnow()
    given = parse_qs(query.decode("latin-1")).get("since")
    since = parse_since(given[0], now) if given else now - DEFAULT_SPAN
    rows = await store.lagging().list_rollups(token_id=cred.token_id, since=since)
    by_model: dict[str, Rollup] = {}
    for row in rows:
        total = by_model.setdefault(row.model, Rollup())
        for c in COUNTS:
            setattr(total, c, getattr(total, c) + getattr(row.totals, c))
    overall = Rollup()
    for part in by_model.values():
        for c in COUNTS:
            setattr(overall, c, getattr(overall, c) + getattr(part, c))
    owners = {cred.token_id: "token", cred.project_id: "project"}
    budgets = await spend_views(store, cred.budgets, owners, now)
    quota = None
    limit = cred.limits.max_requests
    if limit is not None:
        used = await store.get_quota_used(cred.token_id, count_cache_hits=count_cache_hits)
        quota = {"max_requests": limit, "remaining_requests": max(limit - (used or 0), 0)}
    return {
        "object": "usage",
        "token_id": cred.token_id,
        "project_id": cred.project_id,
        "since": since.date().isoformat(),
        "total": _view(overall),
        "by_model": {model: _view(t) for model, t in sorted(by_model.items())},
        "budgets": budgets,
        "quota": quota,
    }


def _view(totals: Rollup) -> dict[str, Any]:
    out: dict[str, Any] = {c: getattr(totals, c) for c in COUNTS if c != "cost_picousd"}
    out["priced_cost_usd"] = picos_to_usd(totals.cost_picousd)
    out["cost_usd"] = None if totals.unpriced else out["priced_cost_usd"]
    return out
