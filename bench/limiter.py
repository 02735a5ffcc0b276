"""Micro-benchmark of the rate limiter's cost per request (local and Redis paths).

Run: python bench/limiter.py [--redis 127.0.0.1:6379] [-n 5000]
Needs a Redis it may write a few keys to (under a random prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

from proxy.limits import LimitConfig, LocalLimiter, RedisLimiter, make_limiter_redis
from proxy.limits.keys import KeyLayout
from shared.clock import new_id, utcnow
from shared.config import Settings
from shared.store import Project, SqlStore, Token, make_store

BIG = 10**9  # limits that apply (and are checked) but never refuse


async def token(store: SqlStore, **fields: int) -> Token:
    now = utcnow()
    project = await store.create_project(
        Project(new_id(), uuid.uuid4().hex, "http://x/v1", "-", True, now, now)
    )
    return await store.create_token(
        Token(new_id(), uuid.uuid4().hex, "sk-llmp-x", project.id, "", True, now, now, **fields)  # type: ignore[arg-type]
    )


async def per_call(call: Callable[[], Awaitable[object]], n: int, repeat: int = 3) -> float:
    """Best-of-``repeat`` mean microseconds per sequential call."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            await call()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return min(runs)


async def concurrent_rate(call: Callable[[], Awaitable[object]], n: int, tasks: int) -> float:
    """Calls per second with ``tasks`` callers at once (one event loop, one process)."""

    async def worker() -> None:
        for _ in range(n // tasks):
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (n // tasks * tasks) / (time.perf_counter() - start)


async def main(redis_addr: str, n: int) -> None:
    tmp = tempfile.mkdtemp()
    store = make_store(Settings.from_env({"DATABASE_URL": os.path.join(tmp, "bench.db")}))
    await store.open()
    await store.migrate()
    plain = await token(store)
    rated = await token(store, rpm=BIG)
    quota = await token(store, rpm=BIG, max_requests=BIG)
    everything = await token(store, rpm=BIG, max_requests=BIG, max_concurrency=BIG)
    windows = LimitConfig(global_limit=BIG, ip_limit=BIG)
    rows: list[tuple[str, str]] = []

    ip = "10.0.0.1"
    off = LocalLimiter(LimitConfig(), store)
    local = LocalLimiter(windows, store)
    us = await per_call(lambda: off.admit(plain, ip), n)
    rows.append(("local, nothing applies", f"{us:.2f} µs"))
    us = await per_call(lambda: local.admit(rated, ip), n)
    rows.append(("local, global+IP+token windows", f"{us:.2f} µs"))
    us = await per_call(lambda: local.admit(quota, ip), n // 10)
    rows.append(("local, windows + SQLite quota UPDATE", f"{us:.1f} µs"))

    settings = Settings.from_env({"REDIS_ADDR": redis_addr})
    redis = make_limiter_redis(settings)
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    limiter = RedisLimiter(windows, store, redis, KeyLayout(prefix, b"bench"))
    ping = await per_call(redis.ping, n)
    rows.append(("redis PING round trip (baseline)", f"{ping:.1f} µs"))
    us = await per_call(lambda: limiter.admit(rated, ip), n)
    rows.append(("redis, global+IP+token windows", f"{us:.1f} µs (+{us - ping:.1f} over PING)"))
    await limiter.admit(quota, ip)  # seed once
    us = await per_call(lambda: limiter.admit(quota, ip), n)
    rows.append(("redis, windows + quota", f"{us:.1f} µs (+{us - ping:.1f} over PING)"))

    async def lease() -> None:
        admission = await limiter.admit(everything, ip)
        await admission.release()

    await lease()
    us = await per_call(lease, n // 2)
    rows.append(("redis, windows + quota + lease + release", f"{us:.1f} µs"))
    rate = await concurrent_rate(lambda: limiter.admit(quota, ip), n, 50)
    rows.append(("redis, windows + quota, 50 concurrent callers", f"{rate:,.0f} admits/s/process"))

    await limiter.close()
    async for key in redis.scan_iter(match=f"{prefix}*"):
        await redis.delete(key)
    await redis.aclose()
    await store.close()
    width = max(len(r[0]) for r in rows)
    print(f"limiter cost per call (n={n}, best of 3, one process, {time.strftime('%Y-%m-%d')})")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.redis, args.n))
