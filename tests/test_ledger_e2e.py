"""The ledger: on the production path (2 instances × 2 workers, 2 dispatchers, a Redis cut, a
dispatcher SIGKILL and a proxy worker SIGKILL) and on the embedded default (a locked SQLite
file, a worker SIGKILL), under traffic of every kind (streams with include_usage absent, true
and false; answers and request bodies past 1 MiB; client aborts; cache hits; upstream 4xx and
5xx; one absurd usage report): every request once, the tokens the upstream sent summed exactly
in the rows and the counters (estimates and clamps apart), the quota exact."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.ledger_kit import (
    Bill,
    Ledger,
    Recorded,
    billing_upstream,
    check,
    hold_streams,
    recorded,
    traffic,
)
from tests.proxy_process import (
    UNLIMITED,
    DispatcherProcess,
    Provisioned,
    ProxyProcess,
    production_env,
    provision,
)
from tests.services import RedisProcess
from tests.tcp_proxy import TcpProxy
from tests.test_ledger_embedded import wait_metric


def workers_of(proxy: ProxyProcess) -> list[int]:
    assert proxy.proc is not None
    master = proxy.proc.pid
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def kill_with_streams_held(
    proxy: ProxyProcess, cred: Provisioned, bill: Bill, ledger: Ledger, n: int
) -> None:
    """``n`` streams held open upstream on ``proxy``, then every worker there SIGKILLed: each
    client's connection fails; the requests go into the ledger as in flight at the kill."""
    rids = [f"held-{i}" for i in range(n)]
    threads, failed = hold_streams(proxy.url, cred, rids)
    deadline = time.monotonic() + 60
    while any(bill.calls[rid] == 0 for rid in rids):
        assert time.monotonic() < deadline, "the held streams never reached the upstream"
        time.sleep(0.05)
    for pid in workers_of(proxy):
        os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(failed) == rids  # every client saw its stream fail
    ledger.held += rids


def settled(read: Callable[[], Recorded], ledger: Ledger, timeout: float = 120.0) -> Recorded:
    """The database once every request has its row and only the killed ones stay accepted."""
    expected = len(ledger.sent) + len(ledger.held)
    deadline = time.monotonic() + timeout
    while True:
        db = read()
        if len(db.rows) >= expected and db.accepted() == len(ledger.held):
            break
        if time.monotonic() > deadline:
            break  # check() says what is missing
        time.sleep(0.3)
    time.sleep(1.0)  # anything beyond would show now
    return read()


def cache_pairs_hit(ledger: Ledger, phase: str) -> bool:
    repeats = [s for s in ledger.sent if s.request_id.startswith(f"{phase}-")]
    repeats = [s for s in repeats if s.kind == "cache" and s.request_id.endswith("-again")]
    return bool(repeats) and all(s.hit for s in repeats)


@pytest.mark.timeout(300)  # four proxies, three dispatchers, five phases on a shared machine
def test_the_ledger_is_exact_through_redis_dispatcher_and_worker_failures(
    tmp_path: Path, db_url: str
) -> None:
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(data_dir=str(tmp_path / "redis")).start()
    cut = TcpProxy("127.0.0.1", redis.port).start()
    upstream, bill = billing_upstream()
    upstream.start()
    env = production_env(
        db_url,
        redis.addr,
        REDIS_TIMEOUT="500ms",
        HTTP_CACHE_ENABLED="true",
        HTTP_CACHE_BACKEND="redis",
        REDIS_CACHE_KEY_PREFIX=f"cache-{uuid.uuid4().hex[:8]}:",
        DISTRIBUTED_RATE_LIMIT_ENABLED="true",
        DISTRIBUTED_RATE_LIMIT_FALLBACK="true",
        DISTRIBUTED_RATE_LIMIT_MAX="0",
        EVENT_SPOOL_DIR=str(tmp_path / "spool"),
    )
    quota_limit = 30
    base = upstream.base_url
    quota = provision(env, tmp_path, base, name="quota", max_requests=quota_limit, rpm=0)
    free = provision(env, tmp_path, base, name="free", rpm=1000)
    via_cut = {**env, "REDIS_ADDR": f"127.0.0.1:{cut.port}"}
    proxies = [ProxyProcess(env=via_cut, cwd=tmp_path, workers=2) for _ in range(2)]
    dispatchers = [DispatcherProcess(env=env, cwd=tmp_path, name=f"d{i}") for i in range(3)]
    ledger = Ledger()
    try:
        for proxy in proxies:
            proxy.start()
        dispatchers[0].start()
        dispatchers[1].start()
        urls = [p.url for p in proxies]
        asyncio.run(traffic(urls, quota, free, 60, ledger, "a", absurd=True))
        assert cache_pairs_hit(ledger, "a")  # a shared cache: hits on either instance

        cut.stop()  # the proxies lose Redis: limits fall back, the cache is bypassed, events spool
        asyncio.run(traffic(urls, quota, free, 60, ledger, "b"))
        cut.start()

        assert dispatchers[0].proc is not None
        dispatchers[0].proc.kill()  # SIGKILL: its pending entries are claimed by a peer
        dispatchers[0].proc.wait()
        asyncio.run(traffic(urls, quota, free, 60, ledger, "c"))
        dispatchers[2].start()

        kill_with_streams_held(proxies[0], free, bill, ledger, 4)
        proxies[0].stop()
        proxies[0].start()  # a fresh instance adopts nothing but serves on
        asyncio.run(traffic(urls, quota, free, 60, ledger, "d"))

        def read() -> Recorded:
            with psycopg.connect(db_url) as conn:
                return recorded(conn)

        db, billed = settled(read, ledger), bill.copy()
        survivor = proxies[1].logs()
    finally:
        upstream.release.set()
        for proxy in proxies:
            proxy.stop()
        for dispatcher in dispatchers:
            dispatcher.stop()
        cut.stop()
        upstream.stop()
        redis.stop()
    assert "Redis unreachable for rate limits" in survivor  # the cut was felt
    assert "spooling them to" in survivor
    check(ledger, billed, db, quota, free, quota_limit)


@pytest.mark.timeout(300)
def test_the_embedded_ledger_is_exact_through_a_locked_database_and_a_killed_worker(
    tmp_path: Path,
) -> None:
    upstream, bill = billing_upstream()
    upstream.start()
    env = {**UNLIMITED, "OBSERVABILITY_BUFFER_SIZE": "20"}  # the cache on, in memory
    quota_limit = 20
    base = upstream.base_url
    quota = provision(env, tmp_path, base, name="quota", max_requests=quota_limit)
    free = provision(env, tmp_path, base, name="free")
    db_path = tmp_path / "llm-proxy.db"
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2)
    ledger = Ledger()
    try:
        proxy.start()
        asyncio.run(traffic([proxy.url], quota, free, 60, ledger, "a", absurd=True))
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # a writer holding the lock, as a backup would
        try:
            # (a quota is a write too: its requests would wait for the lock, so none here)
            asyncio.run(traffic([proxy.url], quota, free, 60, ledger, "b", quota_share=False))
            wait_metric(proxy.url, "llm_proxy_event_bus_spooled_events_total")  # it overflowed
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        kill_with_streams_held(proxy, free, bill, ledger, 3)  # gunicorn starts new workers
        deadline = time.monotonic() + 60
        while True:  # the new workers answer once they are up
            try:
                if httpx.get(f"{proxy.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no worker came back"
            time.sleep(0.2)
        asyncio.run(traffic([proxy.url], quota, free, 120, ledger, "c"))

        def read() -> Recorded:
            with sqlite3.connect(db_path) as conn:
                return recorded(conn)

        db, billed = settled(read, ledger, timeout=90), bill.copy()
    finally:
        upstream.release.set()
        proxy.stop()
        upstream.stop()
    # each worker's own cache, and each pair on one connection: every repeat a hit
    assert all(cache_pairs_hit(ledger, phase) for phase in "abc")
    check(ledger, billed, db, quota, free, quota_limit)
