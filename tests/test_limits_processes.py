"""Quotas hold exactly across OS processes, each with its own limiter and connections."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import pytest
import redis as sync_redis

from shared.config import Settings
from shared.store import SqlStore, make_store
from tests.limits_support import hammer, make_token, set_usage
from tests.services import REDIS_HOST, REDIS_PORT

PROCESSES = 5
CALLERS = 10  # per process: 50 concurrent callers in all


def run_workers(mode: str, env: dict[str, str], token_id: str, prefix: str) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=hammer, args=(mode, env, token_id, prefix, CALLERS, barrier, results))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=90) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    return counts


async def prepared_token(db: str, max_requests: int, used_before: int) -> str:
    store: SqlStore = make_store(Settings.from_env({"DATABASE_URL": db}))
    await store.open()
    await store.migrate()
    token = await make_token(store, max_requests=max_requests)
    await set_usage(store, token.id, requests=used_before + 7, cache_hits=7)
    await store.close()
    return token.id


async def quota_used(db: str, token_id: str) -> int | None:
    store = make_store(Settings.from_env({"DATABASE_URL": db}))
    await store.open()
    try:
        return await store.get_quota_used(token_id, count_cache_hits=False)
    finally:
        await store.close()


def test_redis_quota_is_exact_across_processes(
    tmp_path: Path, redis_env: dict[str, str], unique_prefix: str
) -> None:
    """50 callers in 5 processes start together, a Redis window and the database quota both
    applying: 250 allowed, 50 already used per the database, so exactly 200 get through, and
    the refused requests left no entry in the window."""
    db = str(tmp_path / "quota.db")
    token_id = asyncio.run(prepared_token(db, max_requests=250, used_before=50))
    env = {**redis_env, "DATABASE_URL": db}
    try:
        counts = run_workers("redis", env, token_id, unique_prefix)
    finally:
        client = sync_redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        keys = list(client.scan_iter(match=f"{unique_prefix}*"))
        values = [client.zcard(k) for k in keys]
        if keys:
            client.delete(*keys)
        client.close()
    assert sum(counts) == 200, counts
    assert values == [200]  # the global window: admitted requests only
    assert asyncio.run(quota_used(db, token_id)) == 250


def test_database_quota_is_exact_across_processes(tmp_path: Path) -> None:
    """The embedded default: no Redis, five processes on one SQLite file."""
    db = str(tmp_path / "quota.db")
    token_id = asyncio.run(prepared_token(db, max_requests=250, used_before=50))
    counts = run_workers("local", {"DATABASE_URL": db}, token_id, "")
    assert sum(counts) == 200, counts
    assert asyncio.run(quota_used(db, token_id)) == 250


@pytest.mark.parametrize("count_cache_hits", [False, True])
async def test_take_quota_is_one_conditional_update(
    store: SqlStore, count_cache_hits: bool
) -> None:
    """On both databases, 60 concurrent takers for 20 remaining requests: exactly 20 win, and
    the count starts from the event aggregates (hits excluded unless they count)."""
    token = await make_token(store, max_requests=30)
    await set_usage(store, token.id, requests=14, cache_hits=4)
    before = 14 if count_cache_hits else 10
    taken = await asyncio.gather(
        *(store.take_quota(token.id, count_cache_hits=count_cache_hits) for _ in range(60))
    )
    assert sum(taken) == 30 - before
    assert await store.get_quota_used(token.id, count_cache_hits=count_cache_hits) == 30
    assert not await store.has_quota(token.id, count_cache_hits=count_cache_hits)
    unlimited = await make_token(store)
    assert await store.take_quota(unlimited.id, count_cache_hits=count_cache_hits)
    assert await store.has_quota(unlimited.id, count_cache_hits=count_cache_hits, floor=10**9)


async def test_take_quota_respects_a_floor(store: SqlStore) -> None:
    token = await make_token(store, max_requests=10)
    assert await store.take_quota(token.id, count_cache_hits=False, floor=8)
    assert await store.take_quota(token.id, count_cache_hits=False)
    assert not await store.take_quota(token.id, count_cache_hits=False)
    assert await store.get_quota_used(token.id, count_cache_hits=False) == 10
