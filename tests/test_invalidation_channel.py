"""Two deployments sharing one Redis, each with its own key prefixes: a purge (or a token drop)
in one never reaches the workers of the other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.crypto import new_key
from shared.invalidation import channel
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.services import RedisProcess
from tests.upstream_fake import FakeUpstream

MANAGEMENT = "mgmt-channel-test"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


def deployment_env(redis: RedisProcess, name: str) -> dict[str, str]:
    return {
        **UNLIMITED,
        "ENCRYPTION_KEY": new_key(),
        "MANAGEMENT_TOKEN": MANAGEMENT,
        "REDIS_ADDR": redis.addr,
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",  # Redis in use: purges travel on pub/sub
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"{name}:rl:",
        "REDIS_CACHE_KEY_PREFIX": f"{name}:cache:",
        # the change log would deliver every purge within this: pub/sub alone is under test
        "INVALIDATION_POLL_INTERVAL": "1h",
    }


def cached(proxy: ProxyProcess, creds: Provisioned) -> str:
    """GET until this worker's in-memory cache answers; the request's URL."""
    url = f"{proxy.url}/v1/models?who={creds.project_id}"
    headers = {"Authorization": f"Bearer {creds.token}"}
    deadline = time.monotonic() + 30
    while httpx.get(url, headers=headers).headers["x-proxy-cache"] != "hit":
        assert time.monotonic() < deadline, "never cached"
        time.sleep(0.05)
    return url


def purge(proxy: ProxyProcess, project_id: str | None) -> None:
    answer = httpx.post(
        f"{proxy.url}/manage/cache/purge",
        headers={"Authorization": f"Bearer {MANAGEMENT}"},
        json={"project_id": project_id},
    )
    assert answer.status_code == 200, answer.text


def test_a_purge_in_one_deployment_leaves_the_other_alone(
    tmp_path: Path, fake: FakeUpstream, private_redis: RedisProcess
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env_a = deployment_env(private_redis, "a")
    env_b = deployment_env(private_redis, "b")
    provision(env_a, tmp_path / "a", fake.base_url)
    kept = provision(env_b, tmp_path / "b", fake.base_url, name="kept")
    canary = provision(env_b, tmp_path / "b", fake.base_url, name="canary")
    a = ProxyProcess(env=env_a, cwd=tmp_path / "a", workers=1).start()
    b = ProxyProcess(env=env_b, cwd=tmp_path / "b", workers=1).start()
    try:
        kept_url = cached(b, kept)
        canary_url = cached(b, canary)
        purge(a, None)  # everything, in deployment a
        # b's own purge of the canary, published after a's on the same Redis: once b's worker
        # has applied it, it has seen any message of a's that reached it
        purge(b, canary.project_id)
        canary_headers = {"Authorization": f"Bearer {canary.token}"}
        deadline = time.monotonic() + 30
        while httpx.get(canary_url, headers=canary_headers).headers["x-proxy-cache"] != "miss":
            assert time.monotonic() < deadline, "b's own purge never arrived"
            time.sleep(0.05)
        kept_answer = httpx.get(kept_url, headers={"Authorization": f"Bearer {kept.token}"})
        assert kept_answer.headers["x-proxy-cache"] == "hit"
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_CACHE_KEY_PREFIX", "other:"),
        ("DISTRIBUTED_RATE_LIMIT_PREFIX", "other:"),
        ("REDIS_STREAM_KEY", "other"),
        ("REDIS_DB", "4"),
    ],
)
def test_keys_kept_apart_give_a_deployment_its_own_channel(variable: str, value: str) -> None:
    base = Settings.from_env({})
    other = Settings.from_env({variable: value})
    assert channel(base) == channel(Settings.from_env({"REDIS_ADDR": "elsewhere:6379"}))
    assert channel(other) != channel(base)
    assert channel(other).startswith("llm-proxy:invalidate:")
