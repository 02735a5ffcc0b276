"""Budget reservations on both stores, decided by the database or by Redis: a hard budget
refuses once spent and never lets the spend pass it by more than one request's estimate, under
concurrent reservations; a soft one flags; settlement replaces each reservation with the actual
cost exactly; and the windows' arithmetic."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from proxy.budgets.keys import BudgetKeys
from proxy.budgets.redis import RedisBudgets
from proxy.redis_client import FastRedis
from shared.clock import new_id
from shared.config import Settings
from shared.money.budgets import Window, completion_cap, estimate_cost, estimate_tokens
from shared.money.prices import PriceRow
from shared.store import SqlStore
from shared.store.budgets import BudgetLimit, Decision, Held

NOW = datetime(2026, 12, 1, 10, 41, 30, tzinfo=UTC)
DOLLAR = 10**12


class Arbiter:
    """Who decides: the database alone, or Redis with the database as its record."""

    def __init__(self, store: SqlStore, redis: RedisBudgets | None = None) -> None:
        self.store = store
        self.redis = redis

    async def reserve(self, limits: list[BudgetLimit], picos: int, tokens: int) -> Decision:
        if self.redis is None:
            return await self.store.reserve(limits, picos, tokens, NOW)
        return await self.redis.reserve(limits, picos, tokens, NOW, limits[0].owner_id)

    async def settle(self, held: list[Held], picos: int, tokens: int) -> None:
        if self.redis is None:
            await self.store.settle(held, picos, tokens)
        else:
            await self.redis.settle(held, picos, tokens)

    async def recorded(self, owner: str, window: Window) -> tuple[int, int]:
        """The spend in the durable record (the database), once every settlement is written."""
        if self.redis is not None:
            await self.redis.ledger.flush()
        return await self.store.budget_used(owner, window, NOW)


@pytest.fixture(params=["database", "redis"])
async def arbiter(request: pytest.FixtureRequest, store: SqlStore) -> AsyncIterator[Arbiter]:
    if request.param == "database":
        yield Arbiter(store)
        return
    env: dict[str, str] = request.getfixturevalue("redis_env")
    prefix: str = request.getfixturevalue("unique_prefix")
    redis = FastRedis.from_settings(Settings.from_env(env))
    budgets = RedisBudgets(store, redis, BudgetKeys(prefix, b"test-secret"))
    yield Arbiter(store, budgets)
    await budgets.close()
    await redis.aclose()


async def test_hard_budget_under_concurrency(arbiter: Arbiter) -> None:
    owner = new_id()
    budget = BudgetLimit(owner, Window("1d"), picos=DOLLAR)
    rng = random.Random(3)
    estimates: list[int] = []
    settled: list[int] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        estimate = rng.randrange(DOLLAR // 100, DOLLAR // 20)
        decision = await arbiter.reserve([budget], estimate, 7)
        if decision.refused is not None:
            refused += 1
            return
        estimates.append(estimate)
        await asyncio.sleep(0)
        actual = rng.randrange(0, estimate + 1)  # the estimate is an upper bound
        await arbiter.settle(decision.held, actual, 3)
        settled.append(actual)

    for _ in range(6):
        await asyncio.gather(*(one() for _ in range(25)))
    assert refused > 0
    assert sum(settled) <= DOLLAR + max(estimates)
    assert await arbiter.recorded(owner, Window("1d")) == (sum(settled), 3 * len(settled))


async def test_a_burst_at_an_unspent_budget(arbiter: Arbiter) -> None:
    """Fifty reservations at once against $1 at $0.10 each: ten are admitted, not fifty."""
    owner = new_id()
    budget = BudgetLimit(owner, Window("5h"), picos=DOLLAR)
    tenth = DOLLAR // 10
    decisions = await asyncio.gather(*(arbiter.reserve([budget], tenth, 0) for _ in range(50)))
    admitted = [d for d in decisions if d.refused is None]
    assert len(admitted) == 10
    await asyncio.gather(*(arbiter.settle(d.held, tenth, 0) for d in admitted))
    assert await arbiter.recorded(owner, Window("5h")) == (DOLLAR, 0)


async def test_budgets_together_all_or_none(store: SqlStore) -> None:
    token, project = new_id(), new_id()
    spent_project = BudgetLimit(project, Window("1mo", calendar=True), picos=10, hard=True)
    first = await store.reserve([spent_project], 10, 0, NOW)
    await store.settle(first.held, 10, 0)
    tokens = BudgetLimit(token, Window("1m"), tokens=100)
    decision = await store.reserve([tokens, spent_project], 1, 5, NOW)
    assert decision.refused == spent_project
    assert await store.budget_used(token, Window("1m"), NOW) == (0, 0)  # nothing reserved
    soft = BudgetLimit(project, Window("1mo", calendar=True), picos=10, hard=False)
    flagged = await store.reserve([tokens, soft], 1, 5, NOW)
    assert flagged.refused is None and flagged.exceeded == [soft]
    assert await store.budget_used(token, Window("1m"), NOW) == (1, 5)  # both kinds kept
    await store.settle(flagged.held, 0, 3)
    assert await store.budget_used(token, Window("1m"), NOW) == (0, 3)
    # a minute later the tokens no longer count; the calendar month still does
    later = NOW + timedelta(minutes=2)
    assert await store.budget_used(token, Window("1m"), later) == (0, 0)
    assert await store.budget_used(project, Window("1mo", calendar=True), later) == (10, 3)


@pytest.mark.parametrize(
    ("window", "start", "reset"),
    [
        (Window("5h"), "2026-12-01T05:40:00", "2026-12-01T15:45:00"),
        (Window("5h", True), "2026-12-01T10:00:00", "2026-12-01T15:00:00"),
        (Window("1d", True), "2026-12-01T00:00:00", "2026-12-02T00:00:00"),
        (Window("1mo", True), "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        (Window("1m"), "2026-12-01T10:40:30", "2026-12-01T10:42:31"),
    ],
)
def test_windows(window: Window, start: str, reset: str) -> None:
    assert window.start(NOW) == datetime.fromisoformat(start).replace(tzinfo=UTC)
    assert window.reset(NOW) == datetime.fromisoformat(reset).replace(tzinfo=UTC)
    assert window.start(NOW) <= window.bucket(NOW) <= NOW
    # a rolling window never counts less than its length
    if not window.calendar:
        assert (
            NOW - window.start(NOW)
            >= {"5h": timedelta(hours=5), "1m": timedelta(minutes=1)}[window.name]
        )


def test_estimates() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50}'
    assert estimate_tokens(body, 4096) == (len(body), 50)
    assert completion_cap(b'{"max_output_tokens": 7}', 4096) == 7
    assert completion_cap(b'{"max_completion_tokens": 9, "max_tokens": 3}', 4096) == 9
    assert completion_cap(b'{"max_tokens": true}', 4096) == 4096
    assert completion_cap(b"not json", 10) == 10
    row = PriceRow("m", 2, 10, NOW, cached_input=1, reasoning=12)
    assert estimate_cost(row, 100, 10) == 100 * 2 + 10 * 12
    assert estimate_cost(None, 1, 1) is None
