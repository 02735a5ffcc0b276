"""The real proxy on a TLS-only Redis as an ACL user in database 2: limits, quota, cache and the
event stream all work there, and nothing lands anywhere else."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import redis

from shared.crypto import new_key
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.services import RedisProcess
from tests.tls_files import make_tls_files
from tests.upstream_fake import FakeUpstream

ALICE = ("--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all", "--user", "default", "off")


def test_limits_cache_and_events_over_tls_as_an_acl_user(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    server = RedisProcess(tls=tls, extra=ALICE).start()
    fake = FakeUpstream().start()
    stream = f"events-{uuid.uuid4().hex[:8]}"
    env = {
        **UNLIMITED,
        "ENCRYPTION_KEY": new_key(),
        "REDIS_ADDR": f"rediss://alice:alice-pw@{server.addr}/2",
        "REDIS_TLS_CA_FILE": tls.ca,
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": stream,
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
        "HTTP_CACHE_BACKEND": "redis",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_FALLBACK": "false",  # without Redis: 503, never a local count
    }
    creds = provision(env, tmp_path, fake.base_url, name="reader", rpm=0)
    # a window as well as the quota: the window is what lives in Redis (the quota is decided
    # by the database, docs/rate-limits.md)
    quota = provision(env, tmp_path, fake.base_url, name="quota", max_requests=1, rpm=60)
    check = {
        db: redis.Redis(
            host="127.0.0.1",
            port=server.port,
            db=db,
            username="alice",
            password="alice-pw",
            ssl=True,
            ssl_ca_certs=tls.ca,
        )
        for db in (0, 2)
    }
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2).start()
    try:
        headers = {"Authorization": f"Bearer {creds.token}"}
        first = httpx.get(f"{proxy.url}/v1/models?tls=1", headers=headers)
        answered = 1
        assert (first.status_code, first.headers["x-proxy-cache"]) == (200, "miss")
        # the fill is stored just after the answer went out (issue 12 item 5): ask until it is
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            again = httpx.get(f"{proxy.url}/v1/models?tls=1", headers=headers)
            answered += 1
            if again.headers["x-proxy-cache"] == "hit":
                break
            time.sleep(0.05)
        assert (again.status_code, again.headers["x-proxy-cache"]) == (200, "hit")
        chats = [
            httpx.post(
                f"{proxy.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {quota.token}"},
                json={"model": "gpt-fake", "messages": []},
            )
            for _ in range(2)
        ]
        assert [r.status_code for r in chats] == [200, 429]
        assert chats[1].json()["error"]["code"] == "quota_exceeded"
        deadline = time.monotonic() + 30
        while check[2].xlen(stream) < answered + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert check[2].xlen(stream) >= answered + 1  # every GET and the answered POST
        assert check[2].keys("llmproxy:cache:*") and check[2].keys("ratelimit:*")
        assert check[0].dbsize() == 0
    finally:
        proxy.stop()
        fake.stop()
        for client in check.values():
            client.close()
        server.stop()
