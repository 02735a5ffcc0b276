"""Every Redis feature on a real Redis Cluster (3 masters, 3 replicas) and behind Sentinel, with
real proxies and dispatchers writing Postgres: limits exact, cache hits, every event recorded
exactly once, also through a master failover (planned, and a killed master) mid-load."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from shared.crypto import new_key
from shared.streams import shard_keys
from tests.proxy_process import DispatcherProcess, Provisioned, ProxyProcess, provision
from tests.redis_topologies import Cluster, SentinelSet, require_redis_binaries, wait_until
from tests.services import create_database, drop_database, require
from tests.upstream_fake import FakeUpstream

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

SHARDS = 4
QUOTA = 40  # the quota token's max_requests
RPM = 30  # the windowed token's requests per minute


@dataclass
class Deployment:
    env: dict[str, str]
    cwd: Path
    db_url: str
    fake: FakeUpstream
    plain: Provisioned  # generous window: every request goes through Redis
    quota: Provisioned  # max_requests=QUOTA
    windowed: Provisioned  # rpm=RPM
    outcomes: Counter[str] = field(default_factory=Counter)

    def proxies(self, n: int = 2) -> list[ProxyProcess]:
        return [ProxyProcess(env=self.env, cwd=self.cwd, workers=2).start() for _ in range(n)]

    def dispatchers(self, n: int = 2) -> list[DispatcherProcess]:
        return [
            DispatcherProcess(env=self.env, cwd=self.cwd, name=f"d{i}").start() for i in range(n)
        ]


def deploy(tmp_path: Path, redis_env: dict[str, str]) -> Iterator[Deployment]:
    require("PostgreSQL", "127.0.0.1", 5432)
    db_url = create_database()
    fake = FakeUpstream().start()
    tag = uuid.uuid4().hex[:8]
    env = {
        **redis_env,
        "GLOBAL_RATE_LIMIT": "1000000",
        "IP_RATE_LIMIT": "1000000",
        "DB_DRIVER": "postgres",
        "DATABASE_URL": db_url,
        "ENCRYPTION_KEY": new_key(),
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": f"events-{tag}",
        "REDIS_STREAM_SHARDS": str(SHARDS),
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_PREFIX": f"t{tag}:rl:",
        "HTTP_CACHE_BACKEND": "redis",
        "REDIS_CACHE_KEY_PREFIX": f"t{tag}:cache:",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
        "REDIS_TIMEOUT": "1s",
    }
    made = [
        provision(env, tmp_path, fake.base_url, name=name, **kw)
        for name, kw in (
            ("plain", {"rpm": 1_000_000}),
            ("quota", {"rpm": 1_000_000, "max_requests": QUOTA}),
            ("windowed", {"rpm": RPM}),
        )
    ]
    yield Deployment(env, tmp_path, db_url, fake, *made)
    fake.stop()
    drop_database(db_url)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    require_redis_binaries()
    running = Cluster().start()
    yield running
    running.stop()


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    require_redis_binaries()
    running = SentinelSet().start()
    yield running
    running.stop()


def send(
    urls: list[str],
    deployment: Deployment,
    cred: Provisioned,
    total: int,
    tag: str,
    until: threading.Event | None = None,
) -> Counter[str]:
    """``total`` POSTs with distinct request ids (with ``until``: at least ``total``, and on
    until it is set); outcomes by status and error code."""

    async def go() -> Counter[str]:
        seen: Counter[str] = Counter()
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> None:
                resp = await client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {cred.token}", "X-Request-ID": f"{tag}-{i}"},
                    json={"model": "gpt-fake", "messages": []},
                )
                code = ""
                if resp.status_code != 200:
                    try:
                        code = resp.json()["error"]["code"]
                    except ValueError:
                        code = resp.text[:200]
                seen[f"{resp.status_code} {code}".strip()] += 1

            start = 0
            while start < total or (until is not None and not until.is_set()):
                step = min(10, total - start) if start < total else 10
                await asyncio.gather(*(one(i) for i in range(start, start + step)))
                start += step
        return seen

    return asyncio.run(go())


def rows(db_url: str) -> dict[str, int]:
    """Recorded 200 answers per token, and each token's request_count aggregate."""
    with psycopg.connect(db_url) as conn:
        per_token: dict[str, int] = dict(
            conn.execute(
                "SELECT token_id::text, count(*) FROM request_events WHERE status = 200 "
                "GROUP BY token_id"
            ).fetchall()
        )
        counts: dict[str, int] = dict(
            conn.execute("SELECT id::text, request_count FROM tokens").fetchall()
        )
    return {
        **{f"rows {k}": int(v) for k, v in per_token.items()},
        **{f"count {k}": int(v) for k, v in counts.items()},
    }


def wait_recorded(db_url: str, expected: dict[str, int]) -> dict[str, int]:
    """Poll until the rows reach ``expected`` (per token), then a moment more: a double
    would show now."""
    wanted = {f"rows {k}": v for k, v in expected.items() if v}
    wait_until(
        lambda: all(rows(db_url).get(k, 0) >= v for k, v in wanted.items()),
        "every event to be recorded",
        timeout=180,
    )
    time.sleep(2.0)
    return rows(db_url)


def assert_exactly_once(db_url: str, ok: dict[str, int]) -> None:
    found = wait_recorded(db_url, ok)
    for token_id, n in ok.items():
        assert found.get(f"rows {token_id}", 0) == n, token_id
        assert found[f"count {token_id}"] == n, token_id


class Load:
    """Requests sent from a thread until ``finish()``: they span whatever happens meanwhile."""

    def __init__(self, work: Callable[[threading.Event], Counter[str]]) -> None:
        self.stop = threading.Event()
        self.out: list[Counter[str]] = []
        self.thread = threading.Thread(target=lambda: self.out.append(work(self.stop)))
        self.thread.start()

    def finish(self) -> Counter[str]:
        self.stop.set()
        self.thread.join(300)
        assert self.out, "the load thread failed"
        return self.out[0]


# --- Redis Cluster ---


def test_cluster_serves_limits_cache_and_events_exactly(tmp_path: Path, cluster: Cluster) -> None:
    for d in deploy(tmp_path, {"REDIS_MODE": "cluster", "REDIS_ADDR": cluster.addr}):
        proxies = d.proxies()
        dispatchers = d.dispatchers()
        urls = [p.url for p in proxies]
        try:
            plain = send(urls, d, d.plain, 120, "plain")
            quota = send(urls, d, d.quota, QUOTA + 20, "quota")
            windowed = send(urls, d, d.windowed, RPM + 15, "windowed")
            auth = {"Authorization": f"Bearer {d.plain.token}"}
            first = httpx.get(f"{urls[0]}/v1/models?c=1", headers=auth)
            second = httpx.get(f"{urls[1]}/v1/models?c=1", headers=auth)
            assert plain == Counter({"200": 120})
            assert quota == Counter({"200": QUOTA, "429 quota_exceeded": 20})
            assert windowed == Counter({"200": RPM, "429 rate_limit_exceeded": 15})
            assert (first.headers["x-proxy-cache"], second.headers["x-proxy-cache"]) == (
                "miss",
                "hit",
            )
            ok = {d.plain.token_id: 122, d.quota.token_id: QUOTA, d.windowed.token_id: RPM}
            assert_exactly_once(d.db_url, ok)
            client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
            lengths = [client.xlen(k) for k in shard_keys(d.env["REDIS_STREAM_KEY"], SHARDS)]
            assert all(n > 0 for n in lengths), lengths  # the events spread over every shard
        finally:
            for p in proxies:
                p.stop()
            assert [x.stop() for x in dispatchers] == [0, 0]


def test_cluster_failover_and_killed_master_mid_load(tmp_path: Path, cluster: Cluster) -> None:
    """Load runs while a replica takes over by CLUSTER FAILOVER, then while a master is
    killed: every answer is a 200 or the quota's 429 (the documented fallbacks keep serving),
    the quota is exact, and every answered request has exactly one row."""
    for d in deploy(tmp_path, {"REDIS_MODE": "cluster", "REDIS_ADDR": cluster.addr}):
        proxies = d.proxies()
        dispatchers = d.dispatchers()
        urls = [p.url for p in proxies]
        stream0 = d.env["REDIS_STREAM_KEY"]
        try:
            load = Load(lambda stop: send(urls, d, d.plain, 100, "a", stop))
            quota = Load(lambda stop: send(urls, d, d.quota, QUOTA + 20, "q", stop))
            cluster.failover(cluster.master_of(stream0))
            cluster.kill(cluster.master_of(shard_keys(stream0, SHARDS)[1]))
            plain, spent = load.finish(), quota.finish()
            after = send(urls, d, d.plain, 60, "b")  # and it keeps serving afterwards
            assert set(plain) == {"200"}, plain
            assert spent["200"] == QUOTA and set(spent) == {"200", "429 quota_exceeded"}, spent
            assert after == Counter({"200": 60})
            ok = {d.plain.token_id: plain["200"] + 60, d.quota.token_id: QUOTA}
            assert_exactly_once(d.db_url, ok)
        finally:
            for p in proxies:
                p.stop()
            assert [x.stop() for x in dispatchers] == [0, 0]


# --- Sentinel ---


def test_sentinel_failover_mid_load(tmp_path: Path, sentinels: SentinelSet) -> None:
    env = {
        "REDIS_MODE": "sentinel",
        "REDIS_ADDR": sentinels.addr,
        "REDIS_SENTINEL_MASTER": sentinels.name,
    }
    for d in deploy(tmp_path, env):
        proxies = d.proxies()
        dispatchers = d.dispatchers()
        urls = [p.url for p in proxies]
        try:
            auth = {"Authorization": f"Bearer {d.plain.token}"}
            first = httpx.get(f"{urls[0]}/v1/models?s=1", headers=auth)
            second = httpx.get(f"{urls[1]}/v1/models?s=1", headers=auth)
            assert (first.headers["x-proxy-cache"], second.headers["x-proxy-cache"]) == (
                "miss",
                "hit",
            )
            windowed = send(urls, d, d.windowed, RPM + 10, "w")
            assert windowed == Counter({"200": RPM, "429 rate_limit_exceeded": 10})
            load = Load(lambda stop: send(urls, d, d.plain, 100, "a", stop))
            quota = Load(lambda stop: send(urls, d, d.quota, QUOTA + 20, "q", stop))
            sentinels.failover()
            plain, spent = load.finish(), quota.finish()
            after = send(urls, d, d.plain, 60, "b")
            assert set(plain) == {"200"}, plain
            assert spent["200"] == QUOTA and set(spent) == {"200", "429 quota_exceeded"}, spent
            assert after == Counter({"200": 60})
            ok = {
                d.plain.token_id: plain["200"] + 62,
                d.quota.token_id: QUOTA,
                d.windowed.token_id: RPM,
            }
            assert_exactly_once(d.db_url, ok)
        finally:
            for p in proxies:
                p.stop()
            assert [x.stop() for x in dispatchers] == [0, 0]
