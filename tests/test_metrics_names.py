"""What /metrics exposes passes `promtool check metrics`: a live scrape of a real proxy (gunicorn,
multiprocess mode) and of a real dispatcher, after traffic that touches every kind of metric."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.crypto import new_key
from tests.deploy_wiring import require_tool
from tests.proxy_process import UNLIMITED, DispatcherProcess, ProxyProcess, provision
from tests.services import REDIS_HOST, REDIS_PORT, create_database, drop_database, free_port
from tests.services import require as require_service
from tests.upstream_fake import FakeUpstream


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    yield url
    drop_database(url)


def promtool_problems(promtool: str, exposition: str) -> str:
    """promtool's complaints about an exposition text (empty when it has none)."""
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition.encode(),
        capture_output=True,
        timeout=60,
    )
    problems = (checked.stdout + checked.stderr).decode().strip()
    return problems if checked.returncode or problems else ""


def wait_for(url: str, pattern: str, timeout: float = 60) -> str:
    """Scrape ``url`` until its text matches ``pattern``; the last text."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            text = ""
        if re.search(pattern, text, re.M):
            return text
        assert time.monotonic() < deadline, f"{url} never showed {pattern!r}:\n{text[-2000:]}"
        time.sleep(0.2)


def test_live_scrapes_pass_promtool(tmp_path: Path, fake: FakeUpstream, pg_url: str) -> None:
    promtool = require_tool("promtool")
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    tag = uuid.uuid4().hex[:8]
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": pg_url,
        "ENCRYPTION_KEY": new_key(),
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": f"t{tag}-events",
        "REDIS_CONSUMER_GROUP": f"t{tag}-dispatchers",
        "HTTP_CACHE_BACKEND": "redis",
        "REDIS_CACHE_KEY_PREFIX": f"t{tag}:cache:",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"t{tag}:rl:",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    creds = provision(env, tmp_path, fake.base_url, rpm=4)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    dispatcher_addr = f"127.0.0.1:{free_port()}"
    dispatcher = DispatcherProcess({**env, "DISPATCHER_HTTP_ADDR": dispatcher_addr}, tmp_path)
    dispatcher.start()
    try:
        auth = {"Authorization": f"Bearer {creds.token}"}
        statuses = [httpx.get(f"{proxy.url}/v1/models", headers=auth).status_code for _ in range(2)]
        chat = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
        statuses.append(
            httpx.post(f"{proxy.url}/v1/chat/completions", headers=auth, json=chat).status_code
        )
        statuses += [httpx.get(f"{proxy.url}/v1/files", headers=auth).status_code for _ in range(2)]
        statuses.append(httpx.get(f"{proxy.url}/v1/models", headers={}).status_code)
        assert statuses == [200, 200, 200, 200, 429, 401]

        proxy_text = wait_for(
            f"{proxy.url}/metrics", r"^llm_proxy_event_bus_published_events_total [1-9]"
        )
        dispatcher_text = wait_for(
            f"http://{dispatcher_addr}/metrics", r"^llm_proxy_dispatcher_rows_inserted_total [1-9]"
        )
    finally:
        dispatcher.stop()
        proxy.stop()

    for name in (
        "llm_proxy_requests_total",
        "llm_proxy_cache_hits_total",
        "llm_proxy_cache_misses_total",
        "llm_proxy_cache_bypasses_total",
        "llm_proxy_rate_limited_requests_total",
        "llm_proxy_auth_failures_total",
        "llm_proxy_request_duration_seconds_bucket",
        "cache_hits_total",  # the operator guide's name, an alias
    ):
        assert re.search(rf"^{name}\b", proxy_text, re.M), name
    unprefixed = {
        m
        for m in re.findall(r"^([a-zA-Z_:][\w:]*)", proxy_text + dispatcher_text, re.M)
        if not m.startswith("llm_proxy_")
    }
    assert unprefixed == {"cache_hits_total", "cache_misses_total"}
    assert promtool_problems(promtool, proxy_text) == ""
    assert promtool_problems(promtool, dispatcher_text) == ""
    # promtool is no rubber stamp: it does reject what the conventions forbid.
    assert promtool_problems(promtool, "# TYPE hits counter\nhits 1\n") != ""
