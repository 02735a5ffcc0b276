"""One contract for both cache backends: the in-memory LRU and Redis (real server, own prefix)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.cache import CacheBackend, HttpCache, MemoryBackend, RedisBackend
from proxy.redis_client import FastRedis
from shared.config import Settings
from shared.redis import make_redis
from tests.cache_client import Upstream, raw, request

SSE = [
    b'data: {"id":"c1","choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"id":"c1","choices":[{"delta":{"content":"lo"}}]}\n\n',
    b"data: [DONE]\n\n",
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    name: str
    new_backend: Callable[..., CacheBackend]
    advance: Callable[[float], Awaitable[None]]
    clock: Callable[[], float]

    def cache(self, **options: Any) -> HttpCache:
        backend_options = {k: options.pop(k) for k in ("max_entries", "max_bytes") if k in options}
        return HttpCache(self.new_backend(**backend_options), clock=self.clock, **options)


def memory_harness() -> Harness:
    clock = Clock()

    async def advance(seconds: float) -> None:
        clock.now += seconds

    def memory(max_entries: int = 1000, max_bytes: int = 1 << 24) -> CacheBackend:
        return MemoryBackend(max_entries=max_entries, max_bytes=max_bytes, clock=clock)

    return Harness("in-memory", memory, advance, clock)


@pytest.fixture(params=["in-memory", "redis"])
async def harness(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Harness]:
    if request.param == "in-memory":
        yield memory_harness()
        return
    env: dict[str, str] = request.getfixturevalue("redis_env")
    settings = Settings.from_env(env)
    client = make_redis(settings)
    fast = FastRedis.from_settings(settings)  # lookups go through the lean client, as in the app
    prefix = f"test:cache:{unique_prefix}"

    def redis(**_: Any) -> CacheBackend:
        return RedisBackend(client, prefix=prefix, fast=fast)

    async def sleep(seconds: float) -> None:  # Redis expires keys on its own clock
        await asyncio.sleep(seconds)

    yield Harness("redis", redis, sleep, time.time)
    await RedisBackend(client, prefix=prefix).purge()
    await client.aclose()
    await fast.aclose()


async def test_second_identical_get_is_a_hit(harness: Harness) -> None:
    cache, upstream = harness.cache(), Upstream()
    first = await request(cache, upstream)
    assert first.cache == "miss"
    assert first.cache_status == "llm-proxy; fwd=miss; stored"
    second = await request(cache, upstream)
    assert upstream.calls == 1
    assert second.status == 200 and second.body == first.body
    assert second.cache == "hit"
    assert second.cache_status is not None and second.cache_status.startswith("llm-proxy; hit")
    assert second.header("age") == "0"
    assert second.header("content-type") == "application/json"
    assert second.header("content-length") == str(len(first.body))
    assert cache.stats.hits == 1 and cache.stats.misses == 1 and cache.stats.stores == 1
    # The key never leaves the proxy.
    plan = cache.prepare("p1", "GET", "/v1/models", b"", [], b"")
    assert all(plan.key.encode() not in v for _, v in second.headers)


async def test_entries_expire_with_their_ttl(harness: Harness) -> None:
    cache = harness.cache(default_ttl=300)
    upstream = Upstream(headers={"content-type": "application/json", "cache-control": "max-age=1"})
    await request(cache, upstream)
    assert (await request(cache, upstream)).cache == "hit"
    await harness.advance(1.3)
    assert (await request(cache, upstream)).cache == "miss"
    assert upstream.calls == 2


async def test_default_ttl_applies_when_upstream_is_silent(harness: Harness) -> None:
    cache, upstream = harness.cache(default_ttl=1), Upstream()
    await request(cache, upstream)
    hit = await request(cache, upstream)
    assert hit.cache == "hit" and hit.cache_status in (
        "llm-proxy; hit; ttl=1",
        "llm-proxy; hit; ttl=0",
    )
    await harness.advance(1.3)
    assert (await request(cache, upstream)).cache == "miss"


@pytest.mark.parametrize(
    ("status", "headers", "chunks", "detail"),
    [
        (200, {"cache-control": "no-store"}, [b"{}"], "no-store"),
        (200, {"cache-control": "private, max-age=60"}, [b"{}"], "private"),
        (200, {"cache-control": "no-cache"}, [b"{}"], "no-cache"),
        (200, {"cache-control": "max-age=0"}, [b"{}"], "expired"),
        (200, {"vary": "*"}, [b"{}"], "vary"),
        (500, {}, [b'{"error":{}}'], "status"),
        (429, {"retry-after": "1"}, [b'{"error":{}}'], "status"),
        (404, {}, [b'{"error":{}}'], "status"),
        (200, {"content-length": "2000"}, [b"x" * 2000], "too-large"),
        (200, {}, [b"x" * 600, b"x" * 600], ""),  # no length up front: dropped while capturing
    ],
)
async def test_what_is_never_stored(
    harness: Harness, status: int, headers: dict[str, str], chunks: list[bytes], detail: str
) -> None:
    cache = harness.cache(max_object_bytes=1000)
    upstream = Upstream(status=status, headers={"content-type": "application/json", **headers})
    upstream.chunks = chunks
    first = await request(cache, upstream)
    assert first.cache == "miss"
    if detail:
        assert first.cache_status == f"llm-proxy; fwd=miss; detail={detail}"
    second = await request(cache, upstream)
    assert second.cache == "miss" and upstream.calls == 2
    assert cache.stats.stores == 0 and cache.stats.not_stored == 2


async def test_explicitly_fresh_404_is_stored(harness: Harness) -> None:
    cache = harness.cache()
    upstream = Upstream(status=404, headers={"cache-control": "max-age=60"}, chunks=[b"{}"])
    await request(cache, upstream)
    again = await request(cache, upstream)
    assert again.status == 404 and again.cache == "hit" and upstream.calls == 1


async def test_streamed_response_replays_byte_identical(harness: Harness) -> None:
    cache = harness.cache()
    upstream = Upstream(headers={"content-type": "text/event-stream"}, chunks=SSE)
    body = b'{"model":"m","stream":true,"temperature":0}'
    opt_in = {"content-type": "application/json", "cache-control": "public, max-age=60"}
    args: dict[str, Any] = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": opt_in,
        "body": body,
    }
    first = await request(cache, upstream, **args)
    assert first.cache == "miss" and first.body == b"".join(SSE)
    replay = await request(cache, upstream, **args)
    assert replay.cache == "hit" and upstream.calls == 1
    assert replay.body == b"".join(SSE)
    assert replay.header("content-type") == "text/event-stream"
    assert replay.header("content-length") is None
    plan = cache.prepare("p1", "POST", "/v1/chat/completions", b"", raw(opt_in), body)
    served = await cache.lookup(plan)
    assert served is not None and served.stream


async def test_oversized_stream_is_not_stored(harness: Harness) -> None:
    cache = harness.cache(max_object_bytes=len(SSE[0]) + 5)
    upstream = Upstream(headers={"content-type": "text/event-stream"}, chunks=SSE)
    first = await request(cache, upstream, headers={"x-proxy-cache-ttl": "60"})
    assert first.body == b"".join(SSE)  # the client still gets all of it
    assert (await request(cache, upstream, headers={"x-proxy-cache-ttl": "60"})).cache == "miss"


# Bounds of the in-memory backend only: Redis is bounded by its maxmemory policy, and every
# Redis key carries a TTL (test_every_redis_key_expires).


async def test_lru_evicts_least_recently_used() -> None:
    harness = memory_harness()
    cache, upstream = harness.cache(max_entries=3), Upstream()
    for path in ("/v1/models/a", "/v1/models/b", "/v1/models/c"):
        await request(cache, upstream, path=path)
    assert (
        await request(cache, upstream, path="/v1/models/a")
    ).cache == "hit"  # a is now most recent
    await request(cache, upstream, path="/v1/models/d")  # evicts b
    assert upstream.calls == 4
    assert (await request(cache, upstream, path="/v1/models/a")).cache == "hit"
    assert (await request(cache, upstream, path="/v1/models/c")).cache == "hit"
    assert (await request(cache, upstream, path="/v1/models/d")).cache == "hit"
    assert (await request(cache, upstream, path="/v1/models/b")).cache == "miss"
    backend = cache.backend
    assert isinstance(backend, MemoryBackend) and backend.evictions == 2
    assert (await cache.usage()).entries == 3


async def test_memory_is_bounded_by_bytes() -> None:
    harness = memory_harness()
    cache = harness.cache(max_bytes=3000)
    upstream = Upstream(chunks=[b"x" * 900])
    for path in ("/v1/models/a", "/v1/models/b", "/v1/models/c", "/v1/models/d"):
        await request(cache, upstream, path=path)
    usage = await cache.usage()
    assert usage.bytes is not None and usage.bytes <= 3000 and usage.entries == 2
    assert (await request(cache, upstream, path="/v1/models/d")).cache == "hit"
    assert (await request(cache, upstream, path="/v1/models/a")).cache == "miss"


async def test_projects_never_share_entries(harness: Harness) -> None:
    cache = harness.cache()
    a, b = Upstream(chunks=[b'{"project":"a"}']), Upstream(chunks=[b'{"project":"b"}'])
    await request(cache, a, project="pa")
    other = await request(cache, b, project="pb")
    assert other.cache == "miss" and other.body == b'{"project":"b"}'
    assert (await request(cache, a, project="pa")).body == b'{"project":"a"}'
    assert (await request(cache, b, project="pb")).body == b'{"project":"b"}'
    assert a.calls == 1 and b.calls == 1


async def test_headers_that_change_the_answer_split_the_key(harness: Harness) -> None:
    cache, upstream = harness.cache(), Upstream()
    base = {"accept": "application/json", "authorization": "Bearer sk-llmp-one"}
    await request(cache, upstream, headers=base)
    # Another token of the same project shares the entry.
    other_token = {**base, "authorization": "Bearer sk-llmp-two"}
    assert (await request(cache, upstream, headers=other_token)).cache == "hit"
    for name, value in [
        ("accept", "text/plain"),
        ("openai-organization", "org-x"),
        ("openai-project", "proj-x"),
        ("openai-beta", "assistants=v2"),
        ("accept-encoding", "gzip"),
    ]:
        assert (await request(cache, upstream, headers={**base, name: value})).cache == "miss"
    assert (await request(cache, upstream, query=b"b=2&a=1")).cache == "miss"
    assert (await request(cache, upstream, query=b"a=1&b=2")).cache == "hit"  # sorted query


async def test_post_is_cached_only_when_the_client_opts_in(harness: Harness) -> None:
    cache, upstream = harness.cache(), Upstream(chunks=[b'{"data":[{"embedding":[0.1]}]}'])
    body = b'{"model":"text-embedding-3-small","input":"hello"}'
    args: dict[str, Any] = {"method": "POST", "path": "/v1/embeddings", "body": body}
    plain = await request(cache, upstream, **args)
    assert plain.cache == "bypass" and plain.cache_status == "llm-proxy; fwd=method"
    assert (await request(cache, upstream, **args)).cache == "bypass"
    assert upstream.calls == 2 and cache.stats.bypasses == 2
    for opt_in in (
        {"cache-control": "public, max-age=60"},
        {"cache-control": "s-maxage=60"},
        {"x-proxy-cache-ttl": "60"},
    ):
        await cache.purge()
        calls = upstream.calls
        assert (await request(cache, upstream, headers=opt_in, **args)).cache == "miss"
        assert (await request(cache, upstream, headers=opt_in, **args)).cache == "hit"
        assert upstream.calls == calls + 1
    # Another body is another entry.
    other = {**args, "body": body.replace(b"hello", b"world")}
    assert (await request(cache, upstream, headers=opt_in, **other)).cache == "miss"
    # max-age without public is not an opt-in for POST.
    max_age_only = {"cache-control": "max-age=60"}
    assert (await request(cache, upstream, headers=max_age_only, **args)).cache == "bypass"


async def test_client_no_store_bypasses(harness: Harness) -> None:
    cache, upstream = harness.cache(), Upstream()
    await request(cache, upstream)
    reply = await request(cache, upstream, headers={"cache-control": "no-store"})
    assert reply.cache == "bypass" and reply.cache_status == "llm-proxy; fwd=bypass"
    assert upstream.calls == 2


async def test_vary_keyed_variants(harness: Harness) -> None:
    cache = harness.cache()
    upstream = Upstream(headers={"content-type": "application/json", "vary": "Origin, Accept"})
    a, b = {"origin": "https://a.example"}, {"origin": "https://b.example"}
    assert (await request(cache, upstream, headers=a)).cache == "miss"
    assert (await request(cache, upstream, headers=b)).cache == "miss"
    assert (await request(cache, upstream, headers=a)).cache == "hit"
    assert (await request(cache, upstream, headers=b)).cache == "hit"
    assert (await request(cache, upstream)).cache == "miss"  # no Origin: a third variant
    assert upstream.calls == 3


async def test_purge_by_project_and_path_prefix(harness: Harness) -> None:
    cache, upstream = harness.cache(), Upstream()
    opt_in = {"x-proxy-cache-ttl": "60"}
    vary = Upstream(
        headers={"content-type": "application/json", "vary": "Origin", "cache-control": "public"}
    )
    post: dict[str, Any] = {"method": "POST", "path": "/v1/embeddings", "body": b"{}"}
    for project in ("p1", "p2"):
        await request(cache, upstream, project=project, path="/v1/models")
        await request(cache, upstream, project=project, path="/v1/models/gpt-4o")
        await request(cache, upstream, project=project, headers=opt_in, **post)
        await request(cache, vary, project=project, path="/v1/files", headers={"origin": "o"})

    async def cached(project: str) -> list[str]:
        replies = [
            await request(cache, upstream, project=project, path="/v1/models"),
            await request(cache, upstream, project=project, path="/v1/models/gpt-4o"),
            await request(cache, upstream, project=project, headers=opt_in, **post),
            await request(cache, vary, project=project, path="/v1/files", headers={"origin": "o"}),
        ]
        return [r.cache or "" for r in replies]

    assert await cached("p1") == ["hit"] * 4
    assert await cache.purge("p1", "/v1/models") == 2
    assert await cached("p1") == ["miss", "miss", "hit", "hit"]
    assert await cache.purge("p1") == 4  # the two just re-stored, the POST and the Vary entry
    assert await cached("p1") == ["miss"] * 4
    assert await cached("p2") == ["hit"] * 4
    assert await cache.purge(path_prefix="/v1/files") == 2
    assert await cached("p2") == ["hit", "hit", "hit", "miss"]
    assert await cache.purge() == 7  # p1: 3 (its /v1/files went above), p2: 4
    assert (await cache.usage()).entries == 0


async def test_client_no_cache_revalidates_with_validators(harness: Harness) -> None:
    cache = harness.cache()
    upstream = Upstream(
        headers={"content-type": "application/json", "etag": '"v1"', "cache-control": "max-age=60"}
    )
    upstream.not_modified_if = '"v1"'
    first = await request(cache, upstream)
    again = await request(cache, upstream, headers={"cache-control": "no-cache"})
    assert upstream.calls == 2
    assert dict(upstream.seen[-1])[b"if-none-match"] == b'"v1"'
    assert again.status == 200 and again.body == first.body
    assert again.cache == "miss"
    assert again.cache_status == "llm-proxy; fwd=request; fwd-status=304; stored"
    assert again.header("etag") == '"v1"'
    assert (await request(cache, upstream)).cache == "hit"
    # A changed upstream answer replaces the entry.
    upstream.not_modified_if, upstream.chunks = None, [b'{"v":2}']
    changed = await request(cache, upstream, headers={"pragma": "no-cache"})
    assert changed.body == b'{"v":2}' and changed.cache_status == "llm-proxy; fwd=request; stored"
    assert (await request(cache, upstream)).body == b'{"v":2}'


async def test_client_conditional_that_matches_gets_304(harness: Harness) -> None:
    cache = harness.cache()
    modified = "Tue, 14 Nov 2023 22:13:20 GMT"
    upstream = Upstream(
        headers={"content-type": "application/json", "etag": 'W/"abc"', "last-modified": modified}
    )
    await request(cache, upstream)
    same = await request(cache, upstream, headers={"if-none-match": '"abc"'})
    assert same.status == 304 and same.body == b"" and same.cache == "hit"
    assert same.header("etag") == 'W/"abc"' and same.header("content-type") is None
    later = await request(cache, upstream, headers={"if-modified-since": modified})
    assert later.status == 304
    differs = await request(cache, upstream, headers={"if-none-match": '"other"'})
    assert differs.status == 200 and differs.body
    assert upstream.calls == 1


async def test_client_max_age_refuses_older_entries(harness: Harness) -> None:
    cache, upstream = harness.cache(), Upstream()
    await request(cache, upstream)
    await harness.advance(1.1)
    assert (await request(cache, upstream, headers={"cache-control": "max-age=60"})).cache == "hit"
    old = await request(cache, upstream, headers={"cache-control": "max-age=1"})
    assert old.cache == "miss" and old.cache_status == "llm-proxy; fwd=stale; stored"


async def test_head_and_get_are_separate(harness: Harness) -> None:
    cache, upstream = harness.cache(), Upstream()
    await request(cache, upstream, method="GET")
    head = await request(cache, upstream, method="HEAD")
    assert head.cache == "miss"
    head = await request(cache, upstream, method="HEAD")
    assert head.cache == "hit" and head.body == b""
