"""Quotas and rate limits through real servers: exact across instances, headers, Redis outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.crypto import new_key
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.services import (
    REDIS_HOST,
    REDIS_PORT,
    RedisProcess,
    create_database,
    drop_database,
    require,
)
from tests.tcp_proxy import TcpProxy
from tests.upstream_fake import FakeUpstream


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    yield url
    drop_database(url)


async def hammer(urls: list[str], token: str, total: int, concurrency: int) -> Counter[str]:
    """``total`` chat requests from ``concurrency`` clients spread over ``urls``; outcomes by
    status and error code."""
    outcomes: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def client(n: int) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while not queue.empty():
                i = queue.get_nowait()
                resp = await http.post(
                    f"{urls[(i + n) % len(urls)]}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"model": "gpt-fake", "messages": []},
                )
                code = (
                    resp.json().get("error", {}).get("code", "") if resp.status_code != 200 else ""
                )
                outcomes[f"{resp.status_code} {code}".strip()] += 1

    await asyncio.gather(*(client(n) for n in range(concurrency)))
    return outcomes


def test_quota_is_exact_across_three_instances(
    tmp_path: Path, fake: FakeUpstream, pg_url: str
) -> None:
    require("Redis", REDIS_HOST, REDIS_PORT)
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": pg_url,
        "ENCRYPTION_KEY": new_key(),
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"t{uuid.uuid4().hex[:8]}:",
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
    }
    creds = provision(env, tmp_path, fake.base_url, max_requests=200, rpm=0)
    proxies = [ProxyProcess(env=env, cwd=tmp_path, workers=2) for _ in range(3)]
    try:
        for proxy in proxies:
            proxy.start()
        fake.reset()
        outcomes = asyncio.run(hammer([p.url for p in proxies], creds.token, 300, 50))
    finally:
        for proxy in proxies:
            proxy.stop()
    assert outcomes == Counter({"200": 200, "429 quota_exceeded": 100})
    assert len(fake.requests) == 200


def test_quota_is_exact_on_the_embedded_default(tmp_path: Path, fake: FakeUpstream) -> None:
    creds = provision(UNLIMITED, tmp_path, fake.base_url, max_requests=60)
    proxy = ProxyProcess(env=UNLIMITED, cwd=tmp_path, workers=2).start()
    try:
        fake.reset()
        outcomes = asyncio.run(hammer([proxy.url], creds.token, 90, 20))
    finally:
        proxy.stop()
    assert outcomes == Counter({"200": 60, "429 quota_exceeded": 30})
    assert len(fake.requests) == 60


def test_token_rpm_answers_429_with_headers(tmp_path: Path, fake: FakeUpstream) -> None:
    creds = provision(UNLIMITED, tmp_path, fake.base_url, rpm=3)
    proxy = ProxyProcess(env=UNLIMITED, cwd=tmp_path, workers=1).start()
    try:
        url = f"{proxy.url}/v1/models"
        headers = {"Authorization": f"Bearer {creds.token}"}
        ok = [httpx.get(url, headers=headers) for _ in range(3)]
        limited = httpx.get(url, headers=headers)
        text = httpx.get(f"{proxy.url}/metrics").text
    finally:
        proxy.stop()
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert ok[0].headers["x-ratelimit-limit"] == "3"
    assert ok[-1].headers["x-ratelimit-remaining"] == "0"
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) > 0
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert 'llm_proxy_rate_limited_requests_total{kind="token"} 1.0' in text


@pytest.mark.parametrize("fallback", ["true", "false"])
def test_redis_stopped_mid_run(tmp_path: Path, fake: FakeUpstream, fallback: str) -> None:
    redis = RedisProcess().start()
    env = {
        **UNLIMITED,
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "REDIS_ADDR": redis.addr,
        "DISTRIBUTED_RATE_LIMIT_FALLBACK": fallback,
        "ENCRYPTION_KEY": new_key(),
    }
    creds = provision(env, tmp_path, fake.base_url, rpm=1000)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    headers = {"Authorization": f"Bearer {creds.token}"}
    try:
        assert httpx.get(f"{proxy.url}/v1/models", headers=headers).status_code == 200
        redis.stop()
        during = [httpx.get(f"{proxy.url}/v1/models", headers=headers) for _ in range(3)]
        redis = RedisProcess(redis.port).start()
        # after an outage Redis is probed again at most once a second
        deadline = time.monotonic() + 5
        while (after := httpx.get(f"{proxy.url}/v1/models", headers=headers)).status_code != 200:
            assert time.monotonic() < deadline, after.text
            time.sleep(0.1)
    finally:
        proxy.stop()
        redis.stop()
    if fallback == "true":
        assert [r.status_code for r in during] == [200, 200, 200]
        assert "Redis unreachable for rate limits" in proxy.logs()
    else:
        assert [r.status_code for r in during] == [503, 503, 503]
        assert during[0].headers["retry-after"] == "1"


@pytest.mark.parametrize(("instances", "quota"), [(1, 20), (2, 30)])
def test_quota_is_exact_through_a_redis_outage(
    tmp_path: Path, fake: FakeUpstream, pg_url: str, instances: int, quota: int
) -> None:
    """Distributed limits with the fallback on: requests before, during and after a cut to
    Redis (which keeps its data), spread over every worker of every instance, admit exactly the
    quota. Events go to a stream no dispatcher reads, so the event aggregates know nothing."""
    redis = RedisProcess().start()
    cut = TcpProxy("127.0.0.1", redis.port).start()
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": pg_url,
        "ENCRYPTION_KEY": new_key(),
        "HTTP_CACHE_ENABLED": "false",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_FALLBACK": "true",
        "REDIS_ADDR": f"127.0.0.1:{cut.port}",
        "REDIS_TIMEOUT": "500ms",
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    creds = provision(env, tmp_path, fake.base_url, max_requests=quota, rpm=0)
    proxies = [ProxyProcess(env=env, cwd=tmp_path, workers=2) for _ in range(instances)]
    outcomes: Counter[str] = Counter()
    try:
        for proxy in proxies:
            proxy.start()
        urls = [p.url for p in proxies]
        fake.reset()
        outcomes += asyncio.run(hammer(urls, creds.token, quota * 4 // 10, 4))
        cut.stop()
        outcomes += asyncio.run(hammer(urls, creds.token, quota * 3 // 10, 4))
        cut.start()
        for _ in range(3):  # past the one-second probe interval of every worker
            outcomes += asyncio.run(hammer(urls, creds.token, quota // 2, 4))
            time.sleep(0.5)
    finally:
        for proxy in proxies:
            proxy.stop()
        cut.stop()
        redis.stop()
    assert outcomes["200"] == quota, outcomes
    assert set(outcomes) <= {"200", "429 quota_exceeded"}, outcomes
    assert len(fake.requests) == quota
