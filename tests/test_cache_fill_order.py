"""What a cache fill guarantees (docs/caching.md "When an answer is stored"): once a client has
the whole answer, the entry is in Redis, so an immediate repeat from anywhere is a hit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.services import RedisProcess
from tests.upstream_fake import FakeUpstream, events_of

FRESH_STARTS = 3
PAIRS = 4  # request + immediate repeat, per start


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


def env_for(server: RedisProcess) -> dict[str, str]:
    return {
        **UNLIMITED,
        "HTTP_CACHE_BACKEND": "redis",
        "REDIS_ADDR": server.addr,
        "REDIS_PASSWORD": "",
        # The paused round below must not be mistaken for an unavailable Redis.
        "REDIS_TIMEOUT": "30",
    }


def pair(proxy: ProxyProcess, creds: Provisioned) -> list[str]:
    """One request, then its repeat on a fresh connection as soon as the first is complete."""
    url = f"{proxy.url}/v1/models"
    params = {"n": uuid.uuid4().hex}
    auth = {"Authorization": f"Bearer {creds.token}"}
    answers = []
    for _ in range(2):
        with httpx.Client(timeout=60) as client:  # a new connection each time
            response = client.get(url, params=params, headers=auth)
        assert response.status_code == 200, proxy.logs()
        answers.append(response.headers["x-proxy-cache"])
    return answers


def test_an_immediate_repeat_is_a_hit_after_every_fresh_start(
    fake: FakeUpstream, private_redis: RedisProcess, tmp_path: Path
) -> None:
    env = env_for(private_redis)
    creds = provision(env, tmp_path, fake.base_url)
    admin = redis.Redis(host="127.0.0.1", port=private_redis.port)
    try:
        for start in range(FRESH_STARTS):
            fake.reset()
            proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
            try:
                seen = [pair(proxy, creds) for _ in range(PAIRS)]
                # Hold every Redis write for a second: a store issued after the answer went out
                # would now lose the race to the repeat's read every time, not once in a while.
                admin.client_pause(1000, all=False)
                seen.append(pair(proxy, creds))
            finally:
                proxy.stop()
            assert seen == [["miss", "hit"]] * (PAIRS + 1), f"start {start}"
            assert len(events_of(fake, "/v1/models")) == PAIRS + 1
    finally:
        admin.close()
