"""Micro-benchmark: proxy time spent on a cache hit (plan + lookup + decode + reply headers).

    python -m bench.cache_hit [--redis 127.0.0.1:6379] [--iterations 20000]

For each backend and body size it reports the mean and p99 wall time of one hit as the pipeline
pays it, and, for Redis, a bare GET of the same bytes on the same client (the floor set by the
loopback round trip and redis-py), so the cache's own cost is the difference, and the cost of
decoding an entry alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

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


async def _fill(cache: HttpCache, body: bytes) -> None:
    plan = cache.prepare("p1", "GET", "/v1/models", b"", HEADERS, b"")
    async with cache.fill(plan) as fill:
        fill.start(200, RESPONSE)
        fill.feed(body)
        await fill.finish()


async def _time_hits(cache: HttpCache, n: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        plan = cache.prepare("p1", "GET", "/v1/models", b"", HEADERS, b"")
        served = await cache.lookup(plan)
        samples.append(clock() - t0)
        if served is None:
            raise RuntimeError("expected a hit")
    return samples


def _row(name: str, size: int, samples: list[int]) -> str:
    samples.sort()
    median = statistics.median(samples) / 1000
    mean = statistics.fmean(samples) / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    return f"| {name} | {size // 1024} KiB | {median:.1f} | {mean:.1f} | {p99:.1f} |"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    n = args.iterations
    print("| path | body | median µs | mean µs | p99 µs |")
    print("| --- | --- | --- | --- | --- |")
    for size in SIZES:
        body = b"x" * size
        memory = HttpCache(MemoryBackend(max_entries=100, max_bytes=1 << 26))
        await _fill(memory, body)
        await _time_hits(memory, 1000)  # warm up
        print(_row("in-memory hit", size, await _time_hits(memory, n)))

    client = make_redis(Settings.from_env({"REDIS_ADDR": args.redis}))
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    backend = RedisBackend(client, prefix=prefix)
    try:
        for size in SIZES:
            body = b"x" * size
            redis_cache = HttpCache(backend, max_object_bytes=2 << 20)
            await _fill(redis_cache, body)
            count = max(n // 4, 1000)
            await _time_hits(redis_cache, 500)
            print(_row("redis hit (loopback)", size, await _time_hits(redis_cache, count)))
            blob = encode(CacheEntry(200, tuple(RESPONSE), body, time.time(), time.time() + 300))
            await client.set(prefix + "raw", blob, px=300_000)
            floor = []
            for _ in range(count):
                t0 = time.perf_counter_ns()
                await client.get(prefix + "raw")
                floor.append(time.perf_counter_ns() - t0)
            print(_row("bare redis GET, same bytes", size, floor))
            decode_ns = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                decode(blob)
                decode_ns.append(time.perf_counter_ns() - t0)
            print(_row("entry decode alone", size, decode_ns))
    finally:
        await backend.purge()
        await client.delete(prefix + "raw")
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
