"""The event pipeline through real servers: proxies publish to a Redis stream, dispatchers write
Postgres; exactly N rows whatever stops in between."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.proxy_process import (
    DispatcherProcess,
    Provisioned,
    ProxyProcess,
    production_env,
    provision,
)
from tests.services import RedisProcess, create_database, drop_database, pg_url_for, require
from tests.tcp_proxy import TcpProxy
from tests.upstream_fake import FakeUpstream

# part of the fault suite (docs/operations.md, "Fault matrix")
pytestmark = pytest.mark.fault


@dataclass
class Pipeline:
    env: dict[str, str]
    cwd: Path
    db_url: str
    redis: RedisProcess
    fake: FakeUpstream
    creds: list[Provisioned]

    def proxy(self, **extra: str) -> ProxyProcess:
        return ProxyProcess(env={**self.env, **extra}, cwd=self.cwd, workers=2)

    def dispatcher(self, name: str, **extra: str) -> DispatcherProcess:
        return DispatcherProcess(env={**self.env, **extra}, cwd=self.cwd, name=name)


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    require("PostgreSQL", "127.0.0.1", 5432)
    db_url = create_database()
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(data_dir=str(tmp_path / "redis")).start()
    fake = FakeUpstream().start()
    env = production_env(
        db_url,
        redis.addr,
        HTTP_CACHE_ENABLED="false",
        EVENT_SPOOL_DIR=str(tmp_path / "spool"),
        REDIS_TIMEOUT="500ms",
    )
    creds = [provision(env, tmp_path, fake.base_url, name=f"p{i}") for i in range(3)]
    running = Pipeline(env, tmp_path, db_url, redis, fake, creds)
    yield running
    fake.stop()
    running.redis.stop()  # a test may have replaced it with a restarted one
    drop_database(db_url)


def send(urls: list[str], creds: list[Provisioned], total: int, tag: str) -> Counter[str]:
    """``total`` requests spread over proxies and tokens; how many each token got answered 200."""

    async def go() -> Counter[str]:
        ok: Counter[str] = Counter()
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(i: int) -> None:
                cred = creds[i % len(creds)]
                resp = await client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {cred.token}", "X-Request-ID": f"{tag}-{i}"},
                    json={"model": "gpt-fake", "messages": []},
                )
                if resp.status_code == 200:
                    ok[cred.token_id] += 1

            for start in range(0, total, 20):
                await asyncio.gather(*(one(i) for i in range(start, min(start + 20, total))))
        return ok

    return asyncio.run(go())


def db_counts(db_url: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """Rows, rows per token, request_count per token."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT count(*) FROM request_events").fetchone()
        per_token = dict(
            conn.execute(
                "SELECT token_id::text, count(*) FROM request_events GROUP BY token_id"
            ).fetchall()
        )
        counts = dict(conn.execute("SELECT id::text, request_count FROM tokens").fetchall())
    assert rows is not None
    return int(rows[0]), per_token, counts


def wait_rows(
    db_url: str, expected: int, timeout: float = 60.0
) -> tuple[int, dict[str, int], dict[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        found = db_counts(db_url)
        if found[0] >= expected or time.monotonic() > deadline:
            time.sleep(1.0)  # anything beyond N would arrive now
            return db_counts(db_url)
        time.sleep(0.2)


def test_two_proxies_two_dispatchers_exactly_n(pipeline: Pipeline) -> None:
    proxies = [pipeline.proxy().start() for _ in range(2)]
    dispatchers = [pipeline.dispatcher(f"d{i}").start() for i in range(2)]
    try:
        ok = send([p.url for p in proxies], pipeline.creds, 300, "n")
        rows, per_token, counts = wait_rows(pipeline.db_url, 300)
    finally:
        for p in proxies:
            p.stop()
        codes = [d.stop() for d in dispatchers]
    assert sum(ok.values()) == 300
    assert rows == 300
    assert per_token == dict(ok) and {t: counts[t] for t in ok} == dict(ok)
    assert codes == [0, 0]


def test_redis_stopped_mid_run_proxies_spool_then_catch_up(pipeline: Pipeline) -> None:
    proxy = pipeline.proxy().start()
    dispatcher = pipeline.dispatcher("d1").start()
    try:
        ok = send([proxy.url], pipeline.creds, 60, "before")
        pipeline.redis.stop()
        ok += send([proxy.url], pipeline.creds, 60, "during")  # served while Redis is down
        pipeline.redis = RedisProcess(pipeline.redis.port, data_dir=pipeline.redis.data_dir).start()
        ok += send([proxy.url], pipeline.creds, 30, "after")
        rows, _per_token, counts = wait_rows(pipeline.db_url, 150)
    finally:
        proxy.stop()
        dispatcher.stop()
    assert sum(ok.values()) == 150
    assert rows == 150 and {t: counts[t] for t in ok} == dict(ok)


def test_reject_mode_never_calls_upstream_unrecorded(pipeline: Pipeline) -> None:
    """Redis down and the spool filling up: requests are served while their events can still
    be kept, then refused with 503 before any upstream call; every upstream call is a row."""
    # room for the 20 concurrent requests' accepted and final events while Redis is up
    proxy = pipeline.proxy(EVENT_BUS_FAILURE_MODE="reject", EVENT_SPOOL_MAX_BYTES="40000")
    proxy.workers = 1
    proxy.start()
    dispatcher = pipeline.dispatcher("d1").start()
    try:
        ok = send([proxy.url], pipeline.creds, 30, "up")
        assert sum(ok.values()) == 30
        pipeline.redis.stop()
        during = send([proxy.url], pipeline.creds, 200, "down")
        pipeline.redis = RedisProcess(pipeline.redis.port, data_dir=pipeline.redis.data_dir).start()
        served = 30 + sum(during.values())
        wait_rows_with_status(pipeline.db_url, 200, served)
        upstream_calls = sum(1 for r in pipeline.fake.requests if r.path == "/v1/chat/completions")
    finally:
        proxy.stop()
        dispatcher.stop()
    assert 0 < sum(during.values()) < 200  # some kept in the spool, then refusals
    assert upstream_calls == served
    assert db_status_rows(pipeline.db_url, 200) == served


def db_status_rows(db_url: str, status: int) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM request_events WHERE status = %s", (status,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_rows_with_status(db_url: str, status: int, expected: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while db_status_rows(db_url, status) < expected:
        assert time.monotonic() < deadline, "rows never arrived"
        time.sleep(0.2)


def test_postgres_cut_mid_run_lag_grows_then_drains(pipeline: Pipeline) -> None:
    host_port = pipeline.db_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    cut = TcpProxy(host, int(port)).start()
    db_name = pipeline.db_url.rsplit("/", 1)[1]
    through = pg_url_for(db_name).replace(f"{host}:{port}", f"127.0.0.1:{cut.port}")
    proxy = pipeline.proxy().start()
    dispatcher = pipeline.dispatcher("d1", DATABASE_URL=through).start()
    try:
        ok = send([proxy.url], pipeline.creds, 60, "before")
        wait_rows(pipeline.db_url, 60)
        cut.stop()
        ok += send([proxy.url], pipeline.creds, 90, "during")  # the proxies keep serving
        time.sleep(1.0)
        assert db_counts(pipeline.db_url)[0] == 60  # nothing written while cut: lag grows
        cut.start()
        rows, _per_token, counts = wait_rows(pipeline.db_url, 150)
    finally:
        proxy.stop()
        dispatcher.stop()
        cut.stop()
    assert sum(ok.values()) == 150
    assert rows == 150 and {t: counts[t] for t in ok} == dict(ok)


def worker_pids(proxy: ProxyProcess) -> list[int]:
    assert proxy.proc is not None
    master = proxy.proc.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def db_phases(db_url: str) -> Counter[tuple[str, int]]:
    with psycopg.connect(db_url) as conn:
        found = conn.execute("SELECT phase, status FROM request_events").fetchall()
    return Counter((phase, status) for phase, status in found)


def test_a_killed_worker_leaves_a_flagged_row_per_request_in_flight(pipeline: Pipeline) -> None:
    """Streams already billed upstream when their worker is SIGKILLed: each leaves its accepted
    row (phase 'accepted', status 0), counted once in the token's counters; nothing is lost."""
    proxy = pipeline.proxy()
    proxy.workers = 1
    proxy.start()
    dispatcher = pipeline.dispatcher("d1").start()
    cred = pipeline.creds[0]
    errors: list[BaseException] = []

    def hold_stream(i: int) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{proxy.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {cred.token}", "X-Request-ID": f"held-{i}"},
                json={"model": "hold", "messages": [], "stream": True},
                timeout=30,
            ) as resp:
                for _ in resp.iter_lines():
                    pass
        except httpx.HTTPError as exc:
            errors.append(exc)

    try:
        ok = send([proxy.url], [cred], 10, "done")
        threads = [threading.Thread(target=hold_stream, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(1 for r in pipeline.fake.requests if r.path == "/v1/chat/completions") < 13:
            assert time.monotonic() < deadline, "the streams never reached the upstream"
            time.sleep(0.05)
        (worker,) = worker_pids(proxy)
        os.kill(worker, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=30)
        pipeline.fake.release.set()
        rows, _per_token, counts = wait_rows(pipeline.db_url, 13)
        phases = db_phases(pipeline.db_url)
    finally:
        pipeline.fake.release.set()
        proxy.stop()
        dispatcher.stop()
    assert sum(ok.values()) == 10 and len(errors) == 3
    assert rows == 13
    assert phases == Counter({("final", 200): 10, ("accepted", 0): 3})
    assert counts[cred.token_id] == 13


def test_reject_mode_refuses_the_first_request_after_redis_dies(pipeline: Pipeline) -> None:
    """No usable spool: the first request after Redis dies cannot have its acceptance
    recorded, so it is refused before the upstream is called (it used to be forwarded)."""
    not_a_dir = pipeline.cwd / "spool-is-a-file"
    not_a_dir.write_text("")
    proxy = pipeline.proxy(EVENT_BUS_FAILURE_MODE="reject", EVENT_SPOOL_DIR=str(not_a_dir))
    proxy.workers = 1
    proxy.start()
    try:
        assert sum(send([proxy.url], pipeline.creds, 5, "up").values()) == 5
        calls = len(pipeline.fake.requests)
        pipeline.redis.stop()
        resp = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {pipeline.creds[0].token}"},
            json={"model": "gpt-fake", "messages": []},
            timeout=30,
        )
    finally:
        proxy.stop()
    assert resp.status_code == 503, resp.text
    assert len(pipeline.fake.requests) == calls
