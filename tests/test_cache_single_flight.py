"""Single flight against a real HTTP upstream on loopback: identical concurrent misses in one
worker make one upstream call; the wait is bounded; an answer that cannot be stored frees the
waiting requests at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from proxy.cache import HttpCache, MemoryBackend, RedisBackend
from shared.config import Settings
from shared.redis import make_redis
from tests.cache_client import Header, request

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class FakeUpstream:
    """An HTTP server whose handler the test chooses; counts the calls it receives."""

    handler: Handler | None = None
    calls: int = 0
    base: str = ""
    session: aiohttp.ClientSession | None = None
    runner: web.AppRunner | None = None
    events: dict[str, asyncio.Event] = field(default_factory=dict)

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        self.calls += 1
        assert self.handler is not None
        return await self.handler(req, self.calls)

    async def __call__(
        self, method: str, path: str, headers: list[Header], body: bytes
    ) -> tuple[int, list[Header], AsyncIterator[bytes]]:
        assert self.session is not None
        sent = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        resp = await self.session.request(method, self.base + path, headers=sent, data=body)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            finally:
                resp.release()

        return resp.status, list(resp.raw_headers), chunks()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake._handle)
    fake.runner = web.AppRunner(app)
    await fake.runner.setup()
    site = web.TCPSite(fake.runner, "127.0.0.1", 0)
    await site.start()
    port = fake.runner.addresses[0][1]
    fake.base = f"http://127.0.0.1:{port}"
    fake.session = aiohttp.ClientSession()
    yield fake
    await fake.session.close()
    await fake.runner.cleanup()


@pytest.fixture(params=["in-memory", "redis"])
async def make_cache(
    request: pytest.FixtureRequest, unique_prefix: str
) -> AsyncIterator[Callable[[float], HttpCache]]:
    clients = []

    def make(wait: float) -> HttpCache:
        if request.param == "in-memory":
            return HttpCache(
                MemoryBackend(max_entries=100, max_bytes=1 << 20), single_flight_wait=wait
            )
        env: dict[str, str] = request.getfixturevalue("redis_env")
        client = make_redis(Settings.from_env(env))
        clients.append(client)
        backend = RedisBackend(client, prefix=f"test:cache:{unique_prefix}")
        return HttpCache(backend, single_flight_wait=wait)

    yield make
    for client in clients:
        await RedisBackend(client, prefix=f"test:cache:{unique_prefix}").purge()
        await client.aclose()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def models_key(cache: HttpCache) -> tuple[str, str]:
    return ("p1", cache.prepare("p1", "GET", "/v1/models", b"", [], b"").key)


async def test_fifty_identical_misses_make_one_upstream_call(
    make_cache: Callable[[float], HttpCache], upstream: FakeUpstream
) -> None:
    cache = make_cache(10.0)
    release = asyncio.Event()

    async def slow_models(req: web.Request, call: int) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o"}]})

    upstream.handler = slow_models
    tasks = [asyncio.create_task(request(cache, upstream)) for _ in range(50)]
    try:
        # Release the upstream only once the other 49 are known to be waiting on the first.
        await until(
            lambda: upstream.calls == 1 and cache.flights.waiting(models_key(cache)) == 49,
            "the first request upstream and 49 waiting for it",
        )
    finally:
        release.set()
    replies = await asyncio.gather(*tasks)

    assert upstream.calls == 1
    assert {r.body for r in replies} == {b'{"object": "list", "data": [{"id": "gpt-4o"}]}'}
    assert sorted(r.cache or "" for r in replies) == ["hit"] * 49 + ["miss"]
    collapsed = [r for r in replies if r.cache == "hit"]
    assert {r.cache_status for r in collapsed} == {"llm-proxy; fwd=miss; collapsed"}
    assert cache.stats.collapsed == 49 and cache.stats.hits == 49 and cache.stats.misses == 1
    # Later requests are ordinary hits.
    later = await request(cache, upstream)
    assert later.cache == "hit" and (later.cache_status or "").startswith("llm-proxy; hit")
    assert upstream.calls == 1


async def test_waiting_is_bounded(
    make_cache: Callable[[float], HttpCache], upstream: FakeUpstream
) -> None:
    cache = make_cache(0.05)
    everyone = asyncio.Event()
    outcome: dict[str, bool] = {}

    async def leader_waits_for_the_others(req: web.Request, call: int) -> web.StreamResponse:
        if call == 3:
            everyone.set()
        if call == 1:
            try:
                await asyncio.wait_for(everyone.wait(), 10)
                outcome["others_came"] = True
            except TimeoutError:
                outcome["others_came"] = False
        return web.json_response({"ok": True})

    upstream.handler = leader_waits_for_the_others
    replies = await asyncio.gather(*(request(cache, upstream) for _ in range(3)))
    # The two that waited gave up on the first call (still blocked) and went upstream themselves.
    assert outcome == {"others_came": True} and upstream.calls == 3
    assert [r.cache for r in replies] == ["miss"] * 3
    assert cache.stats.collapsed == 0


async def test_an_unstorable_answer_frees_the_waiting_requests_at_once(
    make_cache: Callable[[float], HttpCache], upstream: FakeUpstream
) -> None:
    cache = make_cache(30.0)
    go, others = asyncio.Event(), asyncio.Event()
    outcome: dict[str, bool] = {}

    async def no_store(req: web.Request, call: int) -> web.StreamResponse:
        headers = {"content-type": "text/event-stream", "cache-control": "no-store"}
        if call == 5:
            others.set()
        if call != 1:
            return web.Response(body=b"data: [DONE]\n\n", headers=headers)
        await go.wait()
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(req)
        await resp.write(b"data: 1\n\n")
        # The rest of the stream only comes once the four waiting requests went upstream: they
        # must have been released when the headers said no-store, not when this stream ends.
        try:
            await asyncio.wait_for(others.wait(), 10)
            outcome["released_early"] = True
        except TimeoutError:
            outcome["released_early"] = False
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    upstream.handler = no_store
    tasks = [asyncio.create_task(request(cache, upstream)) for _ in range(5)]
    try:
        await until(lambda: cache.flights.waiting(models_key(cache)) == 4, "4 waiting requests")
    finally:
        go.set()
    replies = await asyncio.gather(*tasks)
    assert outcome == {"released_early": True}
    assert upstream.calls == 5
    assert all(r.cache == "miss" for r in replies)
    assert {r.cache_status for r in replies} == {"llm-proxy; fwd=miss; detail=no-store"}


async def test_polls_of_a_mutable_resource_never_wait_on_each_other(
    make_cache: Callable[[float], HttpCache], upstream: FakeUpstream
) -> None:
    """Their answer is not stored unasked, so waiting for another poll's headers would only
    double the latency: each identical concurrent poll goes upstream at once."""
    cache = make_cache(30.0)
    everyone = asyncio.Event()
    outcome: dict[int, bool] = {}

    async def batch_status(req: web.Request, call: int) -> web.StreamResponse:
        if call == 3:
            everyone.set()
        try:
            await asyncio.wait_for(everyone.wait(), 10)
            outcome[call] = True
        except TimeoutError:
            outcome[call] = False
        return web.json_response({"id": "batch_1", "status": "in_progress"})

    upstream.handler = batch_status
    polls = [request(cache, upstream, path="/v1/batches/batch_1") for _ in range(3)]
    replies = await asyncio.gather(*polls)
    assert outcome == {1: True, 2: True, 3: True}  # all three were upstream together
    assert {r.cache_status for r in replies} == {"llm-proxy; fwd=miss; detail=mutable"}
    assert cache.stats.collapsed == 0
