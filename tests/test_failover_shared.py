"""Breaker state is shared by every worker through Redis: with two workers, the failing
upstream gets exactly the failures that open its breaker, not that many per worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.provider_fakes import FailingUpstream
from tests.provider_kit import add_upstream, provision_kind
from tests.proxy_process import UNLIMITED, ProxyProcess

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def fakes() -> Iterator[tuple[FailingUpstream, FailingUpstream]]:
    primary = FailingUpstream(name="primary", mode="500").start()
    secondary = FailingUpstream(name="secondary").start()
    yield primary, secondary
    primary.stop()
    secondary.stop()


def test_two_workers_share_one_breaker(
    tmp_path: Path,
    redis_env: dict[str, str],
    unique_prefix: str,
    encryption_key: str,
    fakes: tuple[FailingUpstream, FailingUpstream],
) -> None:
    primary, secondary = fakes
    env = {
        **UNLIMITED,
        **redis_env,
        "ENCRYPTION_KEY": encryption_key,
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",  # Redis in use, so breakers live there
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"test:{unique_prefix}:rl:",
        "BREAKER_KEY_PREFIX": f"test:{unique_prefix}:breaker:",
        "BREAKER_FAILURES": "2",
        "BREAKER_COOLDOWN": "600s",
    }
    creds = provision_kind(env, tmp_path, primary.base_url, "openai", name="p", api_key="k" * 16)
    add_upstream(env, tmp_path, creds.project_id, primary.base_url, api_key="key-one-0000")
    add_upstream(
        env, tmp_path, creds.project_id, secondary.base_url, api_key="key-two-000", priority=1
    )
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(16):  # new connections: both workers take some
                response = client.post(
                    proxy.url + "/v1/chat/completions",
                    json=BODY,
                    headers={
                        "authorization": f"Bearer {creds.token}",
                        "connection": "close",
                        "x-request-id": uuid.uuid4().hex,
                    },
                )
                assert response.status_code == 200, response.text
                assert response.json()["model"] == "secondary"
    finally:
        proxy.stop()
    assert len(primary.requests) == 2
    assert len(secondary.requests) == 16
