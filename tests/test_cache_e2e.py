"""The response cache through running servers: hits, what is never stored, POST opt-in, SSE
replay, sharing through Redis, single flight, purges and per-token hit counts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.crypto import new_key
from shared.store import Token, make_store
from tests.proxy_process import BASE_ENV, UNLIMITED, Provisioned, ProxyProcess, provision
from tests.services import REDIS_HOST, REDIS_PORT, require
from tests.test_proxy_forwarding import Target, wait_for_events
from tests.upstream_fake import FakeUpstream

ENV = {**UNLIMITED, "HTTP_CACHE_MAX_OBJECT_BYTES": "4000", "MANAGEMENT_TOKEN": "mgmt-cache-test"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def single(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, Provisioned, Path]]:
    """One worker, in-memory cache: every request meets the same cache."""
    cwd = tmp_path_factory.mktemp("cache")
    creds = provision(ENV, cwd, fake.base_url)
    proxy = ProxyProcess(env=ENV, cwd=cwd, workers=1).start()
    yield proxy, creds, cwd
    proxy.stop()


def calls(fake: FakeUpstream, path: str) -> int:
    return sum(1 for r in fake.requests if r.path == path)


def test_second_identical_get_is_a_hit(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream
) -> None:
    proxy, creds, _ = single
    fake.reset()
    headers = {"Authorization": f"Bearer {creds.token}"}
    url = f"{proxy.url}/v1/models?order=first"
    first = httpx.get(url, headers=headers)
    second = httpx.get(url, headers=headers)
    assert first.headers["x-proxy-cache"] == "miss"
    assert first.headers["cache-status"].endswith("stored")
    assert second.headers["x-proxy-cache"] == "hit"
    assert second.headers["cache-status"].startswith("llm-proxy; hit")
    assert int(second.headers["age"]) >= 0
    assert second.json() == first.json()
    assert calls(fake, "/v1/models") == 1
    assert "cache-key" not in " ".join(second.headers.keys())


@pytest.mark.parametrize("fake_param", ["no-store", "private", "big", "fail-500"])
def test_never_stored(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream, fake_param: str
) -> None:
    proxy, creds, _ = single
    fake.reset()
    headers = {"Authorization": f"Bearer {creds.token}"}
    url = f"{proxy.url}/v1/models?fake={fake_param}"
    answers = [httpx.get(url, headers=headers) for _ in range(2)]
    assert [a.headers["x-proxy-cache"] for a in answers] == ["miss", "miss"]
    assert calls(fake, "/v1/models") == 2


def test_post_is_cached_only_when_the_client_opts_in(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream
) -> None:
    proxy, creds, _ = single
    fake.reset()
    auth = {"Authorization": f"Bearer {creds.token}"}
    url = f"{proxy.url}/v1/embeddings"
    body = {"model": "emb-fake", "input": "cache me"}
    plain = [httpx.post(url, headers=auth, json=body) for _ in range(2)]
    assert [r.headers["x-proxy-cache"] for r in plain] == ["bypass", "bypass"]
    opted = {**auth, "Cache-Control": "public, max-age=60"}
    cached = [httpx.post(url, headers=opted, json=body) for _ in range(2)]
    assert [r.headers["x-proxy-cache"] for r in cached] == ["miss", "hit"]
    other = httpx.post(url, headers=opted, json={**body, "input": "something else"})
    assert other.headers["x-proxy-cache"] == "miss"
    assert calls(fake, "/v1/embeddings") == 4


def test_streaming_replay_is_byte_identical(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream
) -> None:
    proxy, creds, _ = single
    fake.reset()
    headers = {"Authorization": f"Bearer {creds.token}", "X-Proxy-Cache-TTL": "60"}
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "s"}], "stream": True}
    streams = []
    for _ in range(2):
        with httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", headers=headers, json=body
        ) as resp:
            streams.append(
                (resp.headers["x-proxy-cache"], resp.headers["content-type"], resp.read())
            )
    (miss, ctype1, original), (hit, ctype2, replay) = streams
    assert (miss, hit) == ("miss", "hit")
    assert ctype2.startswith("text/event-stream") and ctype1 == ctype2
    assert replay == original and original.endswith(b"data: [DONE]\n\n")
    assert calls(fake, "/v1/chat/completions") == 1


def test_revalidation_and_client_conditionals(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream
) -> None:
    proxy, creds, _ = single
    fake.reset()
    auth = {"Authorization": f"Bearer {creds.token}"}
    url = f"{proxy.url}/v1/models?fake=etag"
    first = httpx.get(url, headers=auth)
    assert first.headers["etag"] == '"v1"'
    conditional = httpx.get(url, headers={**auth, "If-None-Match": '"v1"'})
    assert conditional.status_code == 304  # answered by the cache
    assert conditional.headers["x-proxy-cache"] == "hit"
    revalidated = httpx.get(url, headers={**auth, "Cache-Control": "no-cache"})
    assert revalidated.status_code == 200 and revalidated.json() == first.json()
    assert "fwd-status=304" in revalidated.headers["cache-status"]
    # the upstream saw our conditional and answered 304: the entry was refreshed, not refetched
    assert [r.headers.get("if-none-match") for r in fake.requests] == [None, '"v1"']


def test_fifty_identical_misses_make_one_upstream_call(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream
) -> None:
    proxy, creds, _ = single
    fake.reset()
    headers = {"Authorization": f"Bearer {creds.token}"}
    url = f"{proxy.url}/v1/models?fake=slow-0.5&herd=1"

    async def herd() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=60)) as c:
            return await asyncio.gather(*(c.get(url, headers=headers) for _ in range(50)))

    answers = asyncio.run(herd())
    assert {a.status_code for a in answers} == {200}
    assert calls(fake, "/v1/models") == 1
    statuses = sorted(a.headers["x-proxy-cache"] for a in answers)
    assert statuses.count("miss") == 1 and statuses.count("hit") == 49


def test_purge_reaches_the_running_workers(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream
) -> None:
    proxy, creds, _ = single
    fake.reset()
    headers = {"Authorization": f"Bearer {creds.token}"}
    url = f"{proxy.url}/v1/models?purge=me"
    assert httpx.get(url, headers=headers).headers["x-proxy-cache"] == "miss"
    assert httpx.get(url, headers=headers).headers["x-proxy-cache"] == "hit"
    purged = httpx.post(
        f"{proxy.url}/manage/cache/purge",
        headers={"Authorization": "Bearer mgmt-cache-test"},
        json={"project_id": creds.project_id, "path_prefix": "/v1/models"},
    )
    assert purged.status_code == 200, purged.text
    deadline = time.monotonic() + 5
    while httpx.get(url, headers=headers).headers["x-proxy-cache"] != "miss":
        assert time.monotonic() < deadline, "the worker kept its entry"
        time.sleep(0.1)


def test_hits_are_recorded_and_counted_per_token(
    single: tuple[ProxyProcess, Provisioned, Path], fake: FakeUpstream
) -> None:
    proxy, creds, cwd = single
    target = Target("cache", proxy, creds, ENV, cwd)
    url = f"{proxy.url}/v1/models?count=1"
    for i in range(3):
        httpx.get(
            url, headers={"Authorization": f"Bearer {creds.token}", "X-Request-ID": f"hit-{i}"}
        )
    events = wait_for_events(target, "hit-0", "hit-1", "hit-2")
    assert [e.cache_status for e in events] == ["miss", "hit", "hit"]
    assert all(e.status == 200 for e in events)
    token = asyncio.run(_token(cwd, creds.token_id))
    assert token.cache_hit_count >= 2 and token.request_count >= 3


async def _token(cwd: Path, token_id: str) -> Token:
    here = os.getcwd()
    os.chdir(cwd)
    try:
        store = make_store(Settings.from_env(ENV))
        await store.open()
        try:
            token = await store.get_token(token_id)
        finally:
            await store.close()
    finally:
        os.chdir(here)
    assert token is not None
    return token


def test_two_instances_share_the_redis_cache(tmp_path: Path, fake: FakeUpstream) -> None:
    require("Redis", REDIS_HOST, REDIS_PORT)
    env = {
        **UNLIMITED,
        "HTTP_CACHE_BACKEND": "redis",
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
        "REDIS_CACHE_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}:cache:",
        "ENCRYPTION_KEY": new_key(),
    }
    creds = provision(env, tmp_path, fake.base_url)
    a = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    b = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    try:
        fake.reset()
        headers = {"Authorization": f"Bearer {creds.token}"}
        first = httpx.get(f"{a.url}/v1/models?shared=1", headers=headers)
        second = httpx.get(f"{b.url}/v1/models?shared=1", headers=headers)
        assert first.headers["x-proxy-cache"] == "miss"
        assert second.headers["x-proxy-cache"] == "hit"
        assert calls(fake, "/v1/models") == 1
        out = json.loads(second.text)
        assert out["data"][0]["id"] == "gpt-fake"
    finally:
        a.stop()
        b.stop()


def test_redis_cache_with_distributed_limits(tmp_path: Path, fake: FakeUpstream) -> None:
    """Lookups and limit checks share a Redis round trip when a hit cannot change the limits:
    rate limits still count hits; a quota is still not spent by them."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    tag = uuid.uuid4().hex[:8]
    env = {
        **UNLIMITED,
        "HTTP_CACHE_BACKEND": "redis",
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
        "REDIS_CACHE_KEY_PREFIX": f"t{tag}:cache:",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"t{tag}:rl:",
        "ENCRYPTION_KEY": new_key(),
    }
    rpm = provision(env, tmp_path, fake.base_url, name="rpm", rpm=3)
    quota = provision(env, tmp_path, fake.base_url, name="quota", max_requests=2, rpm=0)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        fake.reset()
        url = f"{proxy.url}/v1/models?limits=1"
        limited = [
            httpx.get(url, headers={"Authorization": f"Bearer {rpm.token}"}) for _ in range(4)
        ]
        assert [r.status_code for r in limited] == [200, 200, 200, 429]
        assert [r.headers.get("x-proxy-cache") for r in limited[:3]] == ["miss", "hit", "hit"]
        assert limited[2].headers["x-ratelimit-remaining"] == "0"
        quota_url = f"{proxy.url}/v1/models?limits=2"
        spent = [
            httpx.get(quota_url, headers={"Authorization": f"Bearer {quota.token}"})
            for _ in range(5)
        ]
        assert [r.status_code for r in spent] == [200] * 5  # one miss, then free hits
        assert calls(fake, "/v1/models") == 2
    finally:
        proxy.stop()


def test_a_cli_purge_empties_every_in_memory_worker(tmp_path: Path, fake: FakeUpstream) -> None:
    """`manage cache purge` run beside a 2-worker proxy (in-memory cache): each worker drops its
    entries (docs/caching.md "Purging")."""
    env = {**UNLIMITED, "ENCRYPTION_KEY": new_key()}
    creds = provision(env, tmp_path, fake.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    url = f"{proxy.url}/v1/models?purge=cli"
    headers = {"Authorization": f"Bearer {creds.token}"}

    def upstream_calls_reach(n: int) -> None:
        # Fresh connections spread over both workers; each worker misses once, then hits.
        deadline = time.monotonic() + 60
        while calls(fake, "/v1/models") < n:
            assert time.monotonic() < deadline, proxy.logs()
            with httpx.Client() as client:
                assert client.get(url, headers=headers).status_code == 200

    try:
        fake.reset()
        upstream_calls_reach(2)  # both workers hold the entry now
        purged = subprocess.run(
            [sys.executable, "-m", "admin", "manage", "cache", "purge", "--json"],
            env={**BASE_ENV, **env},
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
        assert purged.returncode == 0, purged.stderr.decode()
        assert json.loads(purged.stdout)["backend"] == "in-memory"
        upstream_calls_reach(4)  # each worker missed again: both purged
    finally:
        proxy.stop()
