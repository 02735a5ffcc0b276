"""Micro-benchmark: proxy time spent on a cache hit (plan + lookup + decode + reply headers).

    python -m bench.cache_hit [--redis 127.0.0.1:6379] [--iterations 20000]

For each backend and body size: the wall time of one hit as the pipeline pays it (median, p99)
and the CPU time the worker spends on it (what it cannot spend on other requests meanwhile). For
Redis, a bare GET of the same bytes on the same client, interleaved with the hits, gives the floor
(loopback round trip plus redis-py), and "decode" is the entry decoding alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from proxy.cache import HttpCache, MemoryBackend, RedisBackend
from proxy.cache.entry import CacheEntry, decode, encode
from shared.config import Settings
from shared.redis import make_redis

# What the OpenAI Python SDK sends, roughly.
HEADERS = [
    (b"host", b"proxy.internal"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"user-agent", b"OpenAI/Python 1.59.7"),
    (b"x-stainless-lang", b"python"),
    (b"x-stainless-package-version", b"1.59.7"),
    (b"x-stainless-os", b"Linux"),
    (b"x-stainless-arch", b"x64"),
    (b"x-stainless-runtime", b"CPython"),
    (b"x-stainless-runtime-version", b"3.12.3"),
    (b"authorization", b"Bearer sk-llmp-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"),
    (b"x-stainless-retry-count", b"0"),
]
RESPONSE = [
    (b"content-type", b"application/json"),
    (b"openai-version", b"2020-10-01"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains; preload"),
    (b"x-content-type-options", b"nosniff"),
]
SIZES = (1024, 16 * 1024, 256 * 1024, 1024 * 1024)
Step = Callable[[], Awaitable[object]]


async def _fill(cache: HttpCache, body: bytes) -> None:
    plan = cache.prepare("p1", "GET", "/v1/models", b"", HEADERS, b"")
    async with cache.fill(plan) as fill:
        fill.start(200, RESPONSE)
        fill.feed(body)
        await fill.finish()


def _hit(cache: HttpCache) -> Step:
    async def step() -> object:
        plan = cache.prepare("p1", "GET", "/v1/models", b"", HEADERS, b"")
        served = await cache.lookup(plan)
        if served is None:
            raise RuntimeError("expected a hit")
        return served

    return step


async def _measure(steps: dict[str, Step], n: int) -> dict[str, tuple[list[int], int]]:
    """Run the steps interleaved ``n`` times; wall-time samples and total CPU time of each."""
    wall: dict[str, list[int]] = {name: [] for name in steps}
    cpu = dict.fromkeys(steps, 0)
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    for _ in range(n):
        for name, step in steps.items():
            c0, t0 = cpu_clock(), clock()
            await step()
            wall[name].append(clock() - t0)
            cpu[name] += cpu_clock() - c0
    return {name: (wall[name], cpu[name]) for name in steps}


def _row(name: str, size: int, samples: list[int], cpu_total: int) -> str:
    samples.sort()
    median = statistics.median(samples) / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    cpu = cpu_total / len(samples) / 1000
    return f"| {name} | {size // 1024} KiB | {median:.1f} | {p99:.1f} | {cpu:.1f} |"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    n = args.iterations
    print("| path | body | median µs | p99 µs | CPU µs |")
    print("| --- | --- | --- | --- | --- |")
    for size in SIZES:
        memory = HttpCache(MemoryBackend(max_entries=100, max_bytes=1 << 26))
        await _fill(memory, b"x" * size)
        await _measure({"warm": _hit(memory)}, 1000)
        ((wall, cpu),) = (await _measure({"hit": _hit(memory)}, n)).values()
        print(_row("in-memory hit", size, wall, cpu))

    client = make_redis(Settings.from_env({"REDIS_ADDR": args.redis}))
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    backend = RedisBackend(client, prefix=prefix)
    try:
        for size in SIZES:
            body = b"x" * size
            cache = HttpCache(backend, max_object_bytes=2 << 20)
            await _fill(cache, body)
            blob = encode(CacheEntry(200, tuple(RESPONSE), body, time.time(), time.time() + 300))
            await client.set(prefix + "raw", blob, px=300_000)

            async def bare_get() -> object:
                return await client.get(prefix + "raw")

            async def decode_only(blob: bytes = blob) -> object:
                return decode(blob)

            steps = {"hit": _hit(cache), "get": bare_get, "decode": decode_only}
            await _measure(steps, 300)
            results = await _measure(steps, max(n // 5, 1000))
            print(_row("redis hit (loopback)", size, *results["hit"]))
            print(_row("bare redis GET, same bytes", size, *results["get"]))
            print(_row("entry decode alone", size, *results["decode"]))
    finally:
        await backend.purge()
        await client.delete(prefix + "raw")
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
