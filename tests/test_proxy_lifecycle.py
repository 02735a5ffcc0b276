"""Server lifecycle: graceful SIGTERM with a stream open, and start-up checks."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.crypto import load_keyring, new_key
from shared.invalidation import Notifier, channel
from shared.management import Management
from shared.management.inputs import TokenRef
from shared.redis import make_redis
from shared.store import make_store
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.services import REDIS_HOST, REDIS_PORT, create_database, drop_database, require
from tests.test_proxy_forwarding import Target, wait_for_events
from tests.upstream_fake import FakeUpstream


def test_sigterm_lets_an_open_stream_finish_and_records_it(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    try:
        creds = provision({}, tmp_path, fake.base_url)
        proxy = ProxyProcess(env={}, cwd=tmp_path, workers=1).start()
        target = Target("sigterm", proxy, creds, {}, tmp_path)
        received: list[str] = []

        def client() -> None:
            with httpx.stream(
                "POST",
                f"{proxy.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {creds.token}", "X-Request-ID": "drain-1"},
                json={"model": "hold", "messages": [], "stream": True},
                timeout=30,
            ) as resp:
                received.extend(line for line in resp.iter_lines() if line)

        thread = threading.Thread(target=client)
        thread.start()
        deadline = time.monotonic() + 10
        while not fake.requests:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the first chunk is on its way; the upstream holds the rest
        proxy.signal(signal.SIGTERM)
        time.sleep(0.5)
        # draining: no new connections are accepted
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{proxy.url}/live", timeout=1)
        fake.release.set()
        thread.join(timeout=20)
        assert received[-1] == "data: [DONE]"
        assert len(received) == 6
        assert proxy.proc is not None
        assert proxy.proc.wait(timeout=20) == 0
        [event] = wait_for_events(target, "drain-1")
        assert event.status == 200 and event.stream and event.error == ""
        assert event.completion_tokens == 5
    finally:
        fake.stop()


def test_server_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "admin", "server"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PORT": "eighty"},
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "error: PORT must be an integer >= 1, got 'eighty'"
    out = subprocess.run(
        [sys.executable, "-m", "admin", "server"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "DB_DRIVER": "postgres",
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
        },
        timeout=30,
    )
    assert out.returncode == 1
    assert "ENCRYPTION_KEY must be set" in out.stderr


def test_revocation_reaches_two_instances_over_redis_pubsub(tmp_path: Path) -> None:
    """With the change-log poll slowed to an hour and cached lookups trusted for 5 minutes
    (the default), only Redis pub/sub can make every worker refuse the token within the
    minute this test waits: no clock decides the outcome, only which mechanism exists."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    require("PostgreSQL", "127.0.0.1", 5432)
    fake = FakeUpstream().start()
    db_url = create_database()
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": db_url,
        "ENCRYPTION_KEY": new_key(),
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"t{uuid.uuid4().hex[:8]}:",
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
        "INVALIDATION_POLL_INTERVAL": "1h",
        "APIKEY_CACHE_TTL_MS": "300000",
    }
    proxies = [ProxyProcess(env=env, cwd=tmp_path, workers=2) for _ in range(2)]
    try:
        creds = provision(env, tmp_path, fake.base_url, rpm=0)
        for proxy in proxies:
            proxy.start()
        headers = {"Authorization": f"Bearer {creds.token}"}
        # warm every worker's cache (connections spread over both workers of each instance)
        for _ in range(6):
            for proxy in proxies:
                with httpx.Client() as client:
                    assert client.get(f"{proxy.url}/v1/models", headers=headers).status_code == 200

        async def revoke() -> None:
            settings = Settings.from_env(env)
            store = make_store(settings)
            await store.open()
            redis = make_redis(settings)
            try:
                mgmt = Management(
                    store=store,
                    keyring=load_keyring(settings),
                    actor="test",
                    notifier=Notifier(store, redis, channel=channel(settings)),
                )
                await mgmt.revoke_token(TokenRef(token_id=creds.token_id))
            finally:
                await redis.aclose()
                await store.close()

        asyncio.run(revoke())
        revoked_at = time.monotonic()
        pending = {p.url for p in proxies}
        while pending:
            for url in list(pending):
                codes = set()
                for _ in range(4):  # fresh connections land on either worker
                    with httpx.Client() as client:
                        codes.add(client.get(f"{url}/v1/models", headers=headers).status_code)
                if codes == {401}:
                    pending.discard(url)
            assert time.monotonic() - revoked_at < 60, f"still accepted by {pending}"
    finally:
        for proxy in proxies:
            proxy.stop()
        fake.stop()
        drop_database(db_url)
