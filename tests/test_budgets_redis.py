"""Budgets decided in Redis, on a real Redis (and a real Cluster) over both stores (the race
under concurrency is in the contract suite, tests/test_budgets_store.py): amounts beyond what a
double holds stay exact; a counter lost with a Redis flush is seeded again from the database; with
Redis stopped the database decides, and the spend it decided counts once Redis is back; a
request's counters share one slot, and different tokens spread over the slots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from proxy.budgets import Budgeter
from proxy.budgets.keys import BudgetKeys, group_of
from proxy.budgets.redis import RedisBudgets
from proxy.redis_client import FastRedis
from proxy.redis_cluster import key_slot
from shared.clock import new_id
from shared.config import Settings
from shared.errors import Unavailable
from shared.money.budgets import Window
from shared.store import SqlStore, make_store
from shared.store.budgets import BudgetLimit
from tests.services import RedisProcess
from tests.tcp_proxy import TcpProxy

NOW = datetime.now(tz=UTC)
DOLLAR = 10**12


async def _budgets(store: SqlStore, settings: Settings, prefix: str) -> RedisBudgets:
    return RedisBudgets(
        store, FastRedis.from_settings(settings), BudgetKeys(prefix, b"test-secret")
    )


@pytest.fixture
async def budgets(
    store: SqlStore, redis_env: dict[str, str], unique_prefix: str
) -> AsyncIterator[RedisBudgets]:
    b = await _budgets(store, Settings.from_env(redis_env), unique_prefix)
    yield b
    await b.close()
    await b.redis.aclose()


@pytest.fixture
async def cut_pg(pg_database: str) -> AsyncIterator[tuple[TcpProxy, SqlStore]]:
    """A Postgres store reached through a connection the test can cut."""
    cut = TcpProxy("127.0.0.1", 5432).start()
    url = pg_database.replace("@127.0.0.1:5432/", f"@127.0.0.1:{cut.port}/")
    settings = Settings.from_env(
        {"DB_DRIVER": "postgres", "DATABASE_URL": url, "DATABASE_CONNECT_TIMEOUT": "1s"}
    )
    store = make_store(settings)
    await store.open()
    yield cut, store
    await store.close()
    cut.stop()


async def _counter(b: RedisBudgets, limit: BudgetLimit, group: str) -> dict[bytes, bytes]:
    flat = await b.redis.command("HGETALL", b.keys.key(limit, group))
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def test_amounts_past_a_doubles_precision(budgets: RedisBudgets) -> None:
    """A $2,000,000 budget counted to the pico-dollar (2^53 picos is about $9,007)."""
    owner = new_id()
    limit = 2 * 10**6 * DOLLAR + 7
    budget = BudgetLimit(owner, Window("1mo", calendar=True), picos=limit)
    first = await budgets.reserve([budget], limit - 1, 0, NOW, owner)
    assert first.refused is None and first.used == [(0, 0)]
    second = await budgets.reserve([budget], 1, 0, NOW, owner)  # used = limit - 1: admitted
    assert second.refused is None and second.used == [(limit - 1, 0)]
    third = await budgets.reserve([budget], 1, 0, NOW, owner)
    assert third.refused == budget and third.used == [(limit, 0)]
    await budgets.settle(second.held, 0, 0)  # one pico back
    fourth = await budgets.reserve([budget], 1, 0, NOW, owner)
    assert fourth.refused is None and fourth.used == [(limit - 1, 0)]


async def test_token_and_project_together_all_or_none(budgets: RedisBudgets) -> None:
    token, project = new_id(), new_id()
    spent = BudgetLimit(project, Window("5h"), picos=10)
    tpm = BudgetLimit(token, Window("1m"), tokens=100, tpm=True)
    group = group_of([spent, tpm], project, token)
    assert group == project
    first = await budgets.reserve([spent], 10, 0, NOW, group)
    await budgets.settle(first.held, 10, 0)
    refused = await budgets.reserve([tpm, spent], 1, 5, NOW, group)
    assert refused.refused == spent
    assert (await _counter(budgets, tpm, group))[b"rt"] == b"0"  # nothing reserved
    soft = BudgetLimit(project, Window("5h"), picos=10, hard=False)
    flagged = await budgets.reserve([tpm, soft], 1, 5, NOW, group)
    assert flagged.refused is None and flagged.exceeded == [soft]
    assert sorted(flagged.used) == [(0, 0), (10, 0)]


@pytest.mark.fault
async def test_a_flushed_counter_is_seeded_from_the_database(
    budgets: RedisBudgets, store: SqlStore
) -> None:
    owner = new_id()
    budget = BudgetLimit(owner, Window("1d"), picos=DOLLAR)
    d = await budgets.reserve([budget], DOLLAR, 0, NOW, owner)
    await budgets.settle(d.held, DOLLAR - 5, 0)
    await budgets.ledger.flush()
    await budgets.redis.command("DEL", budgets.keys.key(budget, owner))  # as a FLUSHALL would
    again = await budgets.reserve([budget], 10, 0, NOW, owner)
    assert again.refused is None and again.used == [(DOLLAR - 5, 0)]
    await budgets.settle(again.held, 5, 0)
    assert (await budgets.reserve([budget], 1, 0, NOW, owner)).refused == budget
    await budgets.ledger.flush()
    assert await store.budget_used(owner, Window("1d"), NOW) == (DOLLAR, 0)


@pytest.mark.fault
async def test_with_redis_stopped_the_database_decides(store: SqlStore, unique_prefix: str) -> None:
    server = RedisProcess().start()
    try:
        b = await _budgets(store, Settings.from_env({"REDIS_ADDR": server.addr}), unique_prefix)
        b.retry_after_failure = 0.0  # every request tries Redis again
        owner = new_id()
        budget = BudgetLimit(owner, Window("5h"), picos=100)
        in_redis = await b.reserve([budget], 40, 0, NOW, owner)
        await b.settle(in_redis.held, 30, 0)
        await b.ledger.flush()
        server.stop()
        in_db = await b.reserve([budget], 40, 0, NOW, owner)  # the database sees the 30
        assert b.fallbacks == 1 and in_db.refused is None and in_db.used == [(30, 0)]
        await b.settle(in_db.held, 40, 0)
        server.start()  # empty, as a restarted Redis without persistence
        assert (await b.reserve([budget], 40, 0, NOW, owner)).used == [(70, 0)]
        over = await b.reserve([budget], 40, 0, NOW, owner)
        assert over.refused == budget and over.used == [(110, 0)]
        await b.close()
        await b.redis.aclose()
    finally:
        server.stop()


@pytest.mark.fault
async def test_spend_decided_in_the_database_counts_when_redis_returns(
    store: SqlStore, redis_env: dict[str, str], unique_prefix: str
) -> None:
    """Redis keeps its data through a cut: the counters this worker bypassed are seeded
    afresh, so the spend the database decided meanwhile is not forgotten."""
    host, port = redis_env["REDIS_ADDR"].split(":")
    cut = TcpProxy(host, int(port)).start()
    try:
        settings = Settings.from_env({"REDIS_ADDR": f"127.0.0.1:{cut.port}"})
        b = await _budgets(store, settings, unique_prefix)
        b.retry_after_failure = 0.0
        owner = new_id()
        budget = BudgetLimit(owner, Window("1d"), picos=100)
        first = await b.reserve([budget], 50, 0, NOW, owner)
        await b.settle(first.held, 50, 0)
        await b.ledger.flush()
        cut.stop()  # refused: nothing reaches Redis, which keeps its counter of 50
        in_db = await b.reserve([budget], 50, 0, NOW, owner)
        assert b.fallbacks == 1 and in_db.used == [(50, 0)]
        await b.settle(in_db.held, 50, 0)
        cut.start()
        back = await b.reserve([budget], 1, 0, NOW, owner)
        assert back.refused == budget and back.used == [(100, 0)]
        await b.close()
        await b.redis.aclose()
    finally:
        cut.stop()


def test_keys_share_a_slot_per_request_and_spread_by_token() -> None:
    keys = BudgetKeys("p:", b"secret")
    project = new_id()
    tokens = [new_id() for _ in range(200)]
    shared = BudgetLimit(project, Window("1mo"), picos=DOLLAR)
    for t in tokens[:5]:
        own = [BudgetLimit(t, Window("1d"), picos=DOLLAR), BudgetLimit(t, Window("1m"), tokens=9)]
        group = group_of([*own, shared], project, t)
        assert len({key_slot(keys.key(b, group)) for b in [*own, shared]}) == 1
    alone = [
        key_slot(keys.key(BudgetLimit(t, Window("1d"), picos=1), group_of([], project, t)))
        for t in tokens
    ]
    assert len(set(alone)) > 150  # without a project budget, tokens land all over the slots


@pytest.mark.cluster
async def test_one_script_per_request_on_a_cluster(
    store: SqlStore, cluster_env: dict[str, str], unique_prefix: str
) -> None:
    b = await _budgets(store, Settings.from_env(cluster_env), unique_prefix)
    try:
        project = new_id()
        shared = BudgetLimit(project, Window("1d"), picos=100)
        slots = set()
        for i in range(4):
            token = new_id()
            own = BudgetLimit(token, Window("5h"), picos=100)
            group = group_of([own, shared], project, token)
            slots.add(key_slot(b.keys.key(own, group)))
            d = await b.reserve([own, shared], 30, 0, NOW, group)
            if i < 3:
                await b.settle(d.held, 30, 0)
        assert len(slots) == 1  # the project's slot: one script sees its counter and the token's
        assert sorted(d.used) == [(0, 0), (90, 0)]  # the project's spend, from three tokens
        assert (await b.reserve([own, shared], 1, 0, NOW, group)).refused == shared
    finally:
        await b.close()
        await b.redis.aclose()


@pytest.mark.fault
async def test_changes_the_database_missed_are_written_when_it_returns(
    cut_pg: tuple[TcpProxy, SqlStore], redis_env: dict[str, str], unique_prefix: str
) -> None:
    """The ledger keeps what it could not write through a database cut, and writes it once
    the database answers: the durable record ends exact."""
    cut, store = cut_pg
    b = await _budgets(store, Settings.from_env(redis_env), unique_prefix)
    try:
        owner = new_id()
        budget = BudgetLimit(owner, Window("1d"), picos=DOLLAR)
        d = await b.reserve([budget], 100, 9, NOW, owner)
        cut.stop()
        await b.settle(d.held, 60, 4)  # decided in Redis; the database cannot take it now
        with pytest.raises(Exception):
            await b.ledger.flush()
        assert b.ledger.pending == 1
        cut.start()
        deadline = time.monotonic() + 60
        while True:  # the pool may first meet the connections the cut killed
            try:
                await b.ledger.flush()
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert b.ledger.pending == 0
        assert await store.budget_used(owner, Window("1d"), NOW) == (60, 4)
    finally:
        await b.close()
        await b.redis.aclose()


@pytest.mark.fault
async def test_with_the_database_cut_a_counter_in_redis_still_decides(
    cut_pg: tuple[TcpProxy, SqlStore], redis_env: dict[str, str], unique_prefix: str
) -> None:
    """Redis decides for a budget whose counter it has; one it has not (it would be created
    from the database) is refused with 503, never let through unchecked."""
    cut, store = cut_pg
    b = await _budgets(store, Settings.from_env(redis_env), unique_prefix)
    budgeter = Budgeter(store, default_completion=10, redis=b)
    body = b'{"model": "gpt-4o-mini", "max_tokens": 5}'
    known, fresh = new_id(), new_id()
    try:
        limits = (BudgetLimit(known, Window("1d"), picos=DOLLAR),)
        first = await budgeter.reserve(limits, known, known, body, None, time.time())
        cut.stop()
        again = await budgeter.reserve(limits, known, known, body, None, time.time())
        assert again.held and again.held[0].key is not None  # decided in Redis
        with pytest.raises(Unavailable):
            await budgeter.reserve(
                (BudgetLimit(fresh, Window("1d"), picos=DOLLAR),),
                fresh,
                fresh,
                body,
                None,
                time.time(),
            )
        cut.start()
        for r in (first, again):
            await budgeter.settle(r, None)
    finally:
        await budgeter.close()
        await b.redis.aclose()
