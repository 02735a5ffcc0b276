"""Real ``llm-proxy dispatcher`` processes killed at the worst moments, and a Postgres whose
connections are cut: afterwards the rows are exactly N, the counts exact, nothing pending.

The crash points need no hooks in the code: a test transaction holding a token's row lock
stalls the dispatcher after its INSERT and before its COMMIT, and ``CLIENT PAUSE WRITE`` on a
Redis of the test's own stalls it after the COMMIT and before its XACK."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from shared.store import SqlStore
from shared.streams import EVENT_FIELD
from tests.pipeline_kit import Owners, pending, seed, wait_for
from tests.services import RedisProcess, free_port
from tests.tcp_proxy import TcpProxy

# part of the fault suite (docs/operations.md, "Fault matrix")
pytestmark = pytest.mark.fault

GROUP = "llm-proxy-dispatchers"
ROOT = Path(__file__).resolve().parent.parent


class DispatcherProcess:
    """``llm-proxy dispatcher`` in a process of its own."""

    def __init__(self, env: dict[str, str], tmp: Path, *args: str) -> None:
        self.port = free_port()
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LOG_FORMAT": "text",
            "DISPATCHER_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "DISPATCHER_BLOCK_MS": "200",
            **env,
        }
        self.log = (tmp / f"dispatcher-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "admin", "dispatcher", *args],
            env=full,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=5) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError:
            return False
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


@pytest.fixture
def processes() -> Iterator[list[DispatcherProcess]]:
    started: list[DispatcherProcess] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.kill()


def env_for(url: str, redis_addr: str, key: str, **extra: str) -> dict[str, str]:
    return {
        "DB_DRIVER": "postgres",
        "DATABASE_URL": url,
        "REDIS_ADDR": redis_addr,
        "REDIS_STREAM_KEY": key,
        **extra,
    }


async def publish(redis: aioredis.Redis, key: str, owners: Owners, n: int, start: int = 0) -> None:
    pipe = redis.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(key, {EVENT_FIELD: owners.event(i).to_bytes()})
    await pipe.execute()


async def exactly(store: SqlStore, owners: Owners, redis: aioredis.Redis, key: str, n: int) -> None:
    async def done() -> bool:
        count = await store.count_events()
        assert count <= n
        return count == n and await pending(redis, key, GROUP) == 0

    await wait_for(done, timeout=60, what=f"{n} rows and nothing pending")
    assert await owners.counts(store) == owners.expected
    proj = await store.get_project(owners.project_id)
    assert proj is not None and proj.request_count == n


def lock_waiters(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'SELECT id FROM tokens%%'"
        ).fetchone()
    return int(row[0]) if row else 0


async def stall_after_insert(url: str, owners: Owners) -> psycopg.Connection[Any]:
    """Hold a token's row lock: a dispatcher's transaction waits after its INSERT."""
    conn = psycopg.connect(url)
    conn.execute("SELECT 1 FROM tokens WHERE id = %s FOR UPDATE", (owners.tokens[0].id,))
    return conn


@pytest.mark.parametrize("successor", ["restart", "peer"])
async def test_killed_after_insert_before_commit(
    pg_store: SqlStore,
    pg_database: str,
    redis_env: dict[str, str],
    unique_prefix: str,
    tmp_path: Path,
    processes: list[DispatcherProcess],
    successor: str,
) -> None:
    owners = await seed(pg_store)
    key = f"{unique_prefix}events"
    redis = aioredis.Redis.from_url(f"redis://{redis_env['REDIS_ADDR']}")
    await publish(redis, key, owners, 300)
    env = env_for(pg_database, redis_env["REDIS_ADDR"], key, DISPATCHER_CLAIM_IDLE="1s")
    lock = await stall_after_insert(pg_database, owners)
    victim = DispatcherProcess(env, tmp_path, "--consumer-name", "victim")
    processes.append(victim)
    await wait_for(lambda: _true(lock_waiters(pg_database) == 1), what="the stalled COMMIT")
    victim.kill()
    lock.rollback()
    lock.close()
    await asyncio.sleep(0.5)
    assert await pg_store.count_events() == 0  # the killed transaction left nothing
    name = "victim" if successor == "restart" else "peer"
    processes.append(DispatcherProcess(env, tmp_path, "--consumer-name", name))
    await exactly(pg_store, owners, redis, key, 300)
    await redis.delete(key)
    await redis.aclose()


async def test_killed_after_commit_before_ack(
    pg_store: SqlStore,
    pg_database: str,
    private_redis: RedisProcess,
    tmp_path: Path,
    processes: list[DispatcherProcess],
) -> None:
    owners = await seed(pg_store)
    key = "llm-proxy-events"
    redis = aioredis.Redis.from_url(f"redis://{private_redis.addr}")
    await publish(redis, key, owners, 300)
    env = env_for(pg_database, private_redis.addr, key, DISPATCHER_CLAIM_IDLE="1s")
    lock = await stall_after_insert(pg_database, owners)
    victim = DispatcherProcess(env, tmp_path, "--batch-size", "100")
    processes.append(victim)
    await wait_for(lambda: _true(lock_waiters(pg_database) == 1), what="the stalled COMMIT")
    await redis.execute_command("CLIENT", "PAUSE", "60000", "WRITE")  # XACK will wait
    lock.rollback()  # let it commit
    lock.close()
    await wait_for(lambda: _count(pg_store, 100), what="the first batch committed")
    victim.kill()
    await redis.execute_command("CLIENT", "UNPAUSE")
    assert await pending(redis, key, GROUP) == 300  # committed, but never acknowledged
    peer = DispatcherProcess(env, tmp_path, "--consumer-name", "peer")
    processes.append(peer)
    await exactly(pg_store, owners, redis, key, 300)
    assert peer.metric("llm_proxy_dispatcher_duplicates_skipped_total") == 100
    assert peer.metric("llm_proxy_dispatcher_rows_inserted_total") == 200
    assert peer.terminate() == 0
    await redis.aclose()


async def test_postgres_cut_mid_run_then_back(
    pg_store: SqlStore,
    pg_database: str,
    redis_env: dict[str, str],
    unique_prefix: str,
    tmp_path: Path,
    processes: list[DispatcherProcess],
) -> None:
    """Two dispatchers reach Postgres through a proxy the test cuts: they back off, the
    backlog grows and /ready says so; when Postgres is back they drain to exactly N."""
    owners = await seed(pg_store)
    key = f"{unique_prefix}events"
    redis = aioredis.Redis.from_url(f"redis://{redis_env['REDIS_ADDR']}")
    cut = TcpProxy("127.0.0.1", 5432).start()
    url = pg_database.replace("127.0.0.1:5432", f"127.0.0.1:{cut.port}")
    assert url != pg_database
    env = env_for(url, redis_env["REDIS_ADDR"], key, DISPATCHER_CLAIM_IDLE="2s")
    pair = [DispatcherProcess(env, tmp_path, "--consumer-name", f"d{i}") for i in range(2)]
    processes.extend(pair)
    try:
        await publish(redis, key, owners, 400)
        await wait_for(lambda: _count(pg_store, 400), what="the first 400 rows")
        cut.stop()
        await publish(redis, key, owners, 600, start=400)
        await wait_for(lambda: _true(not any(p.ready() for p in pair)), what="/ready turns 503")
        backlog = await _backlog(redis, key)
        await asyncio.sleep(1.0)
        # Nothing is acknowledged meanwhile. (The backlog can exceed 600: a COMMIT whose reply
        # the cut swallowed counts as failed, so that batch is written again, as duplicates.)
        assert await _backlog(redis, key) == backlog >= 600
        assert await pg_store.count_events() == 400
        cut.start()
        await exactly(pg_store, owners, redis, key, 1000)
        assert all(p.ready() for p in pair)
        assert [p.terminate() for p in pair] == [0, 0]
    finally:
        cut.stop()
        await redis.delete(key)
        await redis.aclose()


async def test_sigterm_finishes_the_batch_in_hand_and_exits_zero(
    pg_store: SqlStore,
    pg_database: str,
    redis_env: dict[str, str],
    unique_prefix: str,
    tmp_path: Path,
    processes: list[DispatcherProcess],
) -> None:
    owners = await seed(pg_store)
    key = f"{unique_prefix}events"
    redis = aioredis.Redis.from_url(f"redis://{redis_env['REDIS_ADDR']}")
    await publish(redis, key, owners, 3000)
    proc = DispatcherProcess(
        env_for(pg_database, redis_env["REDIS_ADDR"], key), tmp_path, "--batch-size", "50"
    )
    processes.append(proc)
    await wait_for(lambda: _count_at_least(pg_store, 1), what="work under way")
    assert proc.terminate() == 0
    assert await pending(redis, key, GROUP) == 0  # what it had read, it wrote and acked
    assert await pg_store.count_events() > 0
    await redis.delete(key)
    await redis.aclose()


async def _true(value: bool) -> bool:
    return value


async def _count(store: SqlStore, n: int) -> bool:
    return await store.count_events() == n


async def _count_at_least(store: SqlStore, n: int) -> bool:
    return await store.count_events() >= n


async def _backlog(redis: aioredis.Redis, key: str) -> int:
    groups: Any = await redis.xinfo_groups(key)
    (group,) = groups
    return int(group["pending"]) + int(group["lag"] or 0)
