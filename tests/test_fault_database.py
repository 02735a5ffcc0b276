"""Fault suite: the proxy through a Postgres outage (cut by a TCP interposer, the shared server
keeps running) serves the credentials it has cached, refuses what it cannot vouch for, and
stays ready while it can serve."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from shared.config import Settings
from shared.crypto import load_keyring, new_key
from shared.invalidation import Notifier, channel
from shared.management import Management
from shared.management.inputs import TokenRef
from shared.redis import make_redis
from shared.store import make_store
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.services import (
    REDIS_HOST,
    REDIS_PORT,
    create_database,
    drop_database,
    require,
)
from tests.tcp_proxy import TcpProxy
from tests.upstream_fake import FakeUpstream

pytestmark = pytest.mark.fault


@dataclass
class Outage:
    env: dict[str, str]  # the direct database: what management writes through
    cwd: Path
    db_url: str
    cut: TcpProxy  # between the proxy and Postgres
    fake: FakeUpstream

    def proxy(self, **extra: str) -> ProxyProcess:
        through = self.db_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.cut.port}")
        return ProxyProcess(
            env={**self.env, "DATABASE_URL": through, **extra}, cwd=self.cwd, workers=1
        )

    def token(self, name: str, **kw: object) -> Provisioned:
        kw.setdefault("rpm", 0)  # the test sends more than a token's default minute allows
        return provision(self.env, self.cwd, self.fake.base_url, name=name, **kw)  # type: ignore[arg-type]


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    require("PostgreSQL", "127.0.0.1", 5432)
    require("Redis", REDIS_HOST, REDIS_PORT)
    db_url = create_database()
    assert "127.0.0.1:5432" in db_url
    fake = FakeUpstream().start()
    cut = TcpProxy("127.0.0.1", 5432).start()
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": db_url,
        "ENCRYPTION_KEY": new_key(),
        # Redis in use, so revocations are pushed over pub/sub
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"t{uuid.uuid4().hex[:8]}:",
        "REDIS_ADDR": f"{REDIS_HOST}:{REDIS_PORT}",
        "INVALIDATION_POLL_INTERVAL": "200ms",
        "APIKEY_CACHE_TTL_MS": "500",
    }
    yield Outage(env, tmp_path, db_url, cut, fake)
    cut.stop()
    fake.stop()
    drop_database(db_url)


def status(proxy: ProxyProcess, token: str) -> int:
    with httpx.Client(timeout=60) as client:
        resp = client.get(f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
        return resp.status_code


def ready(proxy: ProxyProcess) -> httpx.Response:
    with httpx.Client(timeout=60) as client:
        return client.get(f"{proxy.url}/ready")


def wait_status(proxy: ProxyProcess, token: str, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := status(proxy, token)) != expected:
        assert time.monotonic() < deadline, f"still {got}, waiting for {expected}"
        time.sleep(0.1)


def revoke(env: dict[str, str], token_id: str) -> None:
    """Revoke as an operator would, on the database directly, published over Redis."""

    async def go() -> None:
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
            await mgmt.revoke_token(TokenRef(token_id=token_id))
        finally:
            await redis.aclose()
            await store.close()

    asyncio.run(go())


def test_database_cut_cached_tokens_keep_serving_revocations_still_apply(outage: Outage) -> None:
    known = outage.token("known")
    doomed = outage.token("doomed")
    short = outage.token("short", duration="4s")
    never_seen = outage.token("never-seen")
    proxy = outage.proxy(APIKEY_CACHE_OUTAGE_TTL_MS="120000").start()
    try:
        for cred in (known, doomed, short):
            assert status(proxy, cred.token) == 200
        outage.cut.stop()
        # well past the cache TTL and many failed polls: every request still served
        cut_at = time.monotonic()
        served = []
        while time.monotonic() - cut_at < 4.0:
            served.append(status(proxy, known.token))
        assert served and set(served) == {200}
        body = ready(proxy)
        assert body.status_code == 200, body.text
        assert body.json()["status"] == "degraded" and "database" in body.json()["failed"]
        # A change made while this proxy cannot see the database arrives over Redis: the
        # entry is dropped, and what cannot be re-read is refused (503: the proxy cannot tell a
        # revocation from another change until the database answers).
        revoke(outage.env, doomed.token_id)
        wait_status(proxy, doomed.token, 503, timeout=10)
        # an expiry is judged from the cached row: refused once passed
        wait_status(proxy, short.token, 401, timeout=30)
        # a token this proxy never saw cannot be vouched for: 503, never 200
        assert status(proxy, never_seen.token) == 503
        assert status(proxy, known.token) == 200
        outage.cut.start()
        wait_status(proxy, never_seen.token, 200)
        assert status(proxy, known.token) == 200
        assert status(proxy, doomed.token) == 401
        assert ready(proxy).json()["status"] == "ready"
    finally:
        proxy.stop()


def test_past_the_outage_bound_cached_tokens_fail_safe_and_ready_says_so(outage: Outage) -> None:
    known = outage.token("known")
    proxy = outage.proxy(APIKEY_CACHE_OUTAGE_TTL_MS="3000").start()
    try:
        assert status(proxy, known.token) == 200
        outage.cut.stop()
        wait_status(proxy, known.token, 503)
        answer = ready(proxy)
        assert answer.status_code == 503 and "database" in answer.json()["failed"]
        outage.cut.start()
        wait_status(proxy, known.token, 200)
        assert ready(proxy).status_code == 200
    finally:
        proxy.stop()


def test_lookup_on_killed_backends_is_retried_not_a_503(outage: Outage) -> None:
    """Backends killed under an idle pool: the next lookups meet broken connections."""
    creds = [outage.token(f"t{i}") for i in range(6)]
    proxy = outage.proxy(APIKEY_CACHE_SIZE="0", DATABASE_MAX_IDLE_CONNS="5").start()
    try:
        for cred in creds:
            assert status(proxy, cred.token) == 200
        with psycopg.connect(outage.db_url, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        codes = [status(proxy, cred.token) for cred in creds * 2]
        assert set(codes) == {200}, codes
    finally:
        proxy.stop()
