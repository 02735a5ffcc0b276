"""The ledger: on the production path (2 instances × 2 workers, 2 dispatchers, mixed traffic, a
Redis cut, a dispatcher SIGKILL and a proxy worker SIGKILL) and on the embedded default (a
locked SQLite file, a worker SIGKILL): every request once, tokens summed exactly, the quota
exact."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from shared.crypto import new_key
from tests.proxy_process import (
    UNLIMITED,
    DispatcherProcess,
    Provisioned,
    ProxyProcess,
    provision,
)
from tests.services import RedisProcess, create_database, drop_database, require
from tests.tcp_proxy import TcpProxy
from tests.upstream_fake import FakeUpstream

JSON_USAGE = 11 + 7  # what the fake upstream reports for one chat completion
STREAM_USAGE = 9 + 5  # and for one stream that asked for usage (the proxy asks if absent)


@dataclass
class Ledger:
    """What the clients saw: answers by status, tokens the upstream reported in them."""

    statuses: dict[str, dict[int, int]] = field(default_factory=dict)  # token id -> status -> n
    tokens: int = 0

    def add(self, token_id: str, status: int, tokens: int) -> None:
        per = self.statuses.setdefault(token_id, {})
        per[status] = per.get(status, 0) + 1
        self.tokens += tokens

    def answered(self) -> int:
        return sum(sum(per.values()) for per in self.statuses.values())

    def admitted(self, token_id: str) -> int:
        """Requests the proxy let through (everything but its own quota refusals)."""
        return sum(n for status, n in self.statuses.get(token_id, {}).items() if status != 429)


async def traffic(
    urls: list[str],
    quota: Provisioned,
    free: Provisioned,
    n: int,
    ledger: Ledger,
    quota_share: int = 1,
) -> None:
    """``n`` mixed requests: JSON answers and streams (with and without include_usage), upstream
    4xx and 5xx on the free token; JSON requests against the quota'd token (none with
    ``quota_share=0``)."""

    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> None:
            url = f"{urls[i % len(urls)]}/v1/chat/completions"
            kind = i % 6
            cred = quota if kind == 5 and quota_share else free
            body: dict[str, object] = {"model": "gpt-fake", "messages": [{"content": str(i)}]}
            if kind == 1:
                body["stream"] = True
            elif kind == 2:
                body.update(stream=True, stream_options={"include_usage": True})
            elif kind == 3:
                body["model"] = "fail-500"
            elif kind == 4:
                body["model"] = "fail-400"
            headers = {"Authorization": f"Bearer {cred.token}"}
            if body.get("stream"):
                async with client.stream("POST", url, json=body, headers=headers) as resp:
                    text = (await resp.aread()).decode()
                complete = resp.status_code == 200 and "[DONE]" in text
                ledger.add(cred.token_id, resp.status_code, STREAM_USAGE if complete else 0)
                return
            resp = await client.post(url, json=body, headers=headers)
            ok = resp.status_code == 200
            ledger.add(cred.token_id, resp.status_code, JSON_USAGE if ok else 0)

        for start in range(0, n, 16):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 16, n))))


def workers_of(proxy: ProxyProcess) -> list[int]:
    assert proxy.proc is not None
    master = proxy.proc.pid
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def db_state(db_url: str) -> tuple[int, int, int, dict[str, tuple[int, int]]]:
    """Rows, rows left accepted, tokens in rows, per token (request_count, tokens)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE phase = 'accepted'), "
            "COALESCE(sum(prompt_tokens + completion_tokens), 0) FROM request_events"
        ).fetchone()
        counters = {
            str(i): (int(c), int(t))
            for i, c, t in conn.execute(
                "SELECT id, request_count, prompt_tokens + completion_tokens FROM tokens"
            ).fetchall()
        }
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), counters


@pytest.fixture
def db_url() -> Iterator[str]:
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    yield url
    drop_database(url)


@pytest.mark.timeout(300)  # four proxies, three dispatchers, five phases on a shared machine
def test_the_ledger_is_exact_through_redis_dispatcher_and_worker_failures(
    tmp_path: Path, db_url: str
) -> None:
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(data_dir=str(tmp_path / "redis")).start()
    cut = TcpProxy("127.0.0.1", redis.port).start()
    fake = FakeUpstream().start()
    env = {
        **UNLIMITED,
        "DB_DRIVER": "postgres",
        "DATABASE_URL": db_url,
        "ENCRYPTION_KEY": new_key(),
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_ADDR": redis.addr,
        "REDIS_STREAM_KEY": f"events-{uuid.uuid4().hex[:8]}",
        "REDIS_TIMEOUT": "500ms",
        "HTTP_CACHE_ENABLED": "false",
        "DISTRIBUTED_RATE_LIMIT_ENABLED": "true",
        "DISTRIBUTED_RATE_LIMIT_FALLBACK": "true",
        "DISTRIBUTED_RATE_LIMIT_MAX": "0",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    quota_limit = 30
    quota = provision(env, tmp_path, fake.base_url, name="quota", max_requests=quota_limit, rpm=0)
    free = provision(env, tmp_path, fake.base_url, name="free", rpm=1000)
    via_cut = {**env, "REDIS_ADDR": f"127.0.0.1:{cut.port}"}
    proxies = [ProxyProcess(env=via_cut, cwd=tmp_path, workers=2) for _ in range(2)]
    dispatchers = [DispatcherProcess(env=env, cwd=tmp_path, name=f"d{i}") for i in range(3)]
    ledger = Ledger()
    held_errors: list[BaseException] = []
    try:
        for proxy in proxies:
            proxy.start()
        dispatchers[0].start()
        dispatchers[1].start()
        urls = [p.url for p in proxies]
        asyncio.run(traffic(urls, quota, free, 60, ledger))

        cut.stop()  # the proxies lose Redis: limits fall back, events spool
        asyncio.run(traffic(urls, quota, free, 60, ledger))
        cut.start()

        assert dispatchers[0].proc is not None
        dispatchers[0].proc.kill()  # SIGKILL: its pending entries are claimed by a peer
        dispatchers[0].proc.wait()
        asyncio.run(traffic(urls, quota, free, 60, ledger))
        dispatchers[2].start()

        # Streams held open upstream on instance 0, then every worker there is SIGKILLed.
        fake.release.clear()

        def hold() -> None:
            try:
                with httpx.stream(
                    "POST",
                    f"{proxies[0].url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {free.token}"},
                    json={"model": "hold", "messages": [], "stream": True},
                    timeout=30,
                ) as resp:
                    for _ in resp.iter_lines():
                        pass
            except httpx.HTTPError as exc:
                held_errors.append(exc)

        before = len(fake.requests)
        threads = [threading.Thread(target=hold) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(fake.requests) < before + 4:
            assert time.monotonic() < deadline, "the held streams never reached the upstream"
            time.sleep(0.05)
        for pid in workers_of(proxies[0]):
            os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=30)
        fake.release.set()
        proxies[0].stop()
        proxies[0].start()  # a fresh instance adopts nothing but serves on
        asyncio.run(traffic(urls, quota, free, 60, ledger))

        flagged = len(held_errors)
        expected_rows = ledger.answered() + flagged
        deadline = time.monotonic() + 120
        while db_state(db_url)[0] < expected_rows and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(1.0)  # anything doubled would show now
        rows, accepted, tokens_in_rows, counters = db_state(db_url)
        survivor = proxies[1].logs()
    finally:
        fake.release.set()
        for proxy in proxies:
            proxy.stop()
        for dispatcher in dispatchers:
            dispatcher.stop()
        cut.stop()
        fake.stop()
        redis.stop()
    assert "Redis unreachable for rate limits" in survivor  # the cut was felt
    assert "spooling them to" in survivor
    assert flagged == 4
    assert ledger.statuses[quota.token_id].get(200, 0) == quota_limit  # the quota, exactly
    assert rows == expected_rows and accepted == flagged  # nothing lost, nothing doubled
    assert tokens_in_rows == ledger.tokens  # Σ reported upstream = Σ in events
    assert sum(t for _, t in counters.values()) == ledger.tokens  # = the counters
    assert counters[quota.token_id][0] == quota_limit
    assert counters[free.token_id][0] == ledger.admitted(free.token_id) + flagged


def sqlite_state(db: Path) -> tuple[int, int, int, dict[str, tuple[int, int]]]:
    """As ``db_state``, on the embedded default's SQLite file."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*), sum(phase = 'accepted'), "
            "COALESCE(sum(prompt_tokens + completion_tokens), 0) FROM request_events"
        ).fetchone()
        counters = {
            str(i): (int(c), int(t))
            for i, c, t in conn.execute(
                "SELECT id, request_count, prompt_tokens + completion_tokens FROM tokens"
            ).fetchall()
        }
    return int(row[0]), int(row[1] or 0), int(row[2]), counters


@pytest.mark.timeout(300)
def test_the_embedded_ledger_is_exact_through_a_locked_database_and_a_killed_worker(
    tmp_path: Path,
) -> None:
    fake = FakeUpstream().start()
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false", "OBSERVABILITY_BUFFER_SIZE": "20"}
    quota_limit = 30
    quota = provision(env, tmp_path, fake.base_url, name="quota", max_requests=quota_limit)
    free = provision(env, tmp_path, fake.base_url, name="free")
    db = tmp_path / "llm-proxy.db"
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=2)
    ledger = Ledger()
    held_errors: list[BaseException] = []
    try:
        proxy.start()
        asyncio.run(traffic([proxy.url], quota, free, 60, ledger))
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # a writer holding the lock, as a backup would
        try:
            # (a quota is a write too: its requests would wait for the lock, so none here)
            asyncio.run(traffic([proxy.url], quota, free, 60, ledger, quota_share=0))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        fake.release.clear()

        def hold() -> None:
            try:
                with httpx.stream(
                    "POST",
                    f"{proxy.url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {free.token}"},
                    json={"model": "hold", "messages": [], "stream": True},
                    timeout=30,
                ) as resp:
                    for _ in resp.iter_lines():
                        pass
            except httpx.HTTPError as exc:
                held_errors.append(exc)

        before = len(fake.requests)
        threads = [threading.Thread(target=hold) for _ in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(fake.requests) < before + 3:
            assert time.monotonic() < deadline, "the held streams never reached the upstream"
            time.sleep(0.05)
        for pid in workers_of(proxy):
            os.kill(pid, signal.SIGKILL)  # gunicorn starts new workers
        for thread in threads:
            thread.join(timeout=30)
        fake.release.set()
        deadline = time.monotonic() + 60
        while True:  # the new workers answer once they are up
            try:
                if httpx.get(f"{proxy.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no worker came back"
            time.sleep(0.2)
        asyncio.run(traffic([proxy.url], quota, free, 150, ledger))
        flagged = len(held_errors)
        expected_rows = ledger.answered() + flagged
        deadline = time.monotonic() + 90
        while sqlite_state(db)[0] < expected_rows and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(1.0)
        rows, accepted, tokens_in_rows, counters = sqlite_state(db)
    finally:
        fake.release.set()
        proxy.stop()
        fake.stop()
    assert flagged == 3
    assert ledger.statuses[quota.token_id].get(200, 0) == quota_limit
    assert rows == expected_rows and accepted == flagged
    assert tokens_in_rows == ledger.tokens
    assert sum(t for _, t in counters.values()) == ledger.tokens
    assert counters[quota.token_id][0] == quota_limit
    assert counters[free.token_id][0] == ledger.admitted(free.token_id) + flagged
