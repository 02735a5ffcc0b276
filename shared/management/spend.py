"""What each budget (and tokens-per-minute limit) of a token or project has spent, holds
reserved and has left in its current window: one view, for `show`, the API and GET /v1/usage."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from shared.management.views import View, iso
from shared.money.amounts import picos_to_usd
from shared.money.budgets import Window
from shared.store.budgets import BudgetLimit, Spend


class SpendReader(Protocol):
    """Where the budget counters are read (the store today)."""

    async def budget_spend(self, owner_id: str, window: Window, now: datetime) -> Spend: ...


def spend_view(limit: BudgetLimit, spend: Spend, owner: str, now: datetime) -> View:
    """``used`` is what admission counts against the limit: the settled ``spent`` plus the
    ``reserved`` estimates of requests in flight; ``remaining`` is the limit less that (null
    without a limit of that kind)."""
    used_picos = spend.spent_picos + spend.reserved_picos
    used_tokens = spend.spent_tokens + spend.reserved_tokens
    return {
        "owner": owner,
        "kind": "tpm" if limit.tpm else "budget",
        "window": limit.window.name,
        "calendar": limit.window.calendar,
        "mode": "hard" if limit.hard else "soft",
        "limit_usd": picos_to_usd(limit.picos),
        "spent_usd": picos_to_usd(spend.spent_picos),
        "reserved_usd": picos_to_usd(spend.reserved_picos),
        "used_usd": picos_to_usd(used_picos),
        "remaining_usd": None
        if limit.picos is None
        else picos_to_usd(max(limit.picos - used_picos, 0)),
        "limit_tokens": limit.tokens,
        "spent_tokens": spend.spent_tokens,
        "reserved_tokens": spend.reserved_tokens,
        "used_tokens": used_tokens,
        "remaining_tokens": None if limit.tokens is None else max(limit.tokens - used_tokens, 0),
        "window_start": iso(limit.window.start(now)),
        "resets_at": iso(limit.window.reset(now)),
    }


async def spend_views(
    reader: SpendReader, limits: Iterable[BudgetLimit], owners: dict[str, str], now: datetime
) -> list[View]:
    """The views of ``limits``, each read at ``now``; ``owners`` names each owner id's kind
    ("token" or "project")."""
    return [
        spend_view(b, await reader.budget_spend(b.owner_id, b.window, now), owners[b.owner_id], now)
        for b in limits
    ]
