"""One Redis address for both clients: the database, the ACL user and TLS of REDIS_ADDR reach
redis-py and the lean client alike, on first connect and after every reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.redis_client import FastRedis
from shared.config import Settings
from shared.redis import make_redis
from tests.services import REDIS_HOST, REDIS_PORT, RedisProcess, require
from tests.tls_files import TlsFiles, make_tls_files

ALICE = ("--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all")


def client_info(reply: bytes) -> dict[str, str]:
    fields = (part.partition("=") for part in reply.decode().split())
    return {key: value for key, _, value in fields}


async def both_infos(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """``CLIENT INFO`` as redis-py's connection and the lean client's connection see it."""
    slow = make_redis(settings)
    fast = FastRedis.from_settings(settings)
    try:
        slow_info = client_info(await slow.execute_command("CLIENT", "INFO"))
        fast_info = client_info(await fast.command("CLIENT", "INFO"))
    finally:
        await slow.aclose()
        await fast.aclose()
    return slow_info, fast_info


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path)


@pytest.fixture
def acl_redis() -> Iterator[RedisProcess]:
    """A Redis whose default user is off: only alice, with her password, gets in."""
    server = RedisProcess(extra=(*ALICE, "--user", "default", "off")).start()
    yield server
    server.stop()


async def test_a_database_in_the_url_is_where_both_clients_read_and_write(
    unique_prefix: str,
) -> None:
    require("Redis", REDIS_HOST, REDIS_PORT)
    settings = Settings.from_env({"REDIS_ADDR": f"redis://{REDIS_HOST}:{REDIS_PORT}/3"})
    slow = make_redis(settings)
    fast = FastRedis.from_settings(settings)
    try:
        await slow.set(f"{unique_prefix}entry", b"written by redis-py", ex=60)
        assert await fast.get(f"{unique_prefix}entry") == b"written by redis-py"
    finally:
        await slow.delete(f"{unique_prefix}entry")
        await slow.aclose()
        await fast.aclose()


async def test_an_acl_user_in_the_url_is_who_both_clients_are(acl_redis: RedisProcess) -> None:
    settings = Settings.from_env({"REDIS_ADDR": f"redis://alice:alice-pw@{acl_redis.addr}"})
    slow_info, fast_info = await both_infos(settings)
    assert slow_info["user"] == fast_info["user"] == "alice"


async def test_rediss_is_spoken_by_both_clients(tls_files: TlsFiles) -> None:
    server = RedisProcess(tls=tls_files).start()
    try:
        settings = Settings.from_env(
            {"REDIS_ADDR": f"rediss://{server.addr}", "REDIS_TLS_CA_FILE": tls_files.ca}
        )
        slow_info, fast_info = await both_infos(settings)
        assert slow_info["db"] == fast_info["db"] == "0"
    finally:
        server.stop()


async def test_a_restart_mid_load_puts_no_command_on_the_wrong_database(tmp_path: Path) -> None:
    """Markers go to db 5 through the lean client, a new command on every turn of the event loop
    (as requests arrive, whatever Redis is doing), while a password-protected Redis restarts
    three times keeping its data. A command sent before AUTH and SELECT were answered would
    land in db 0, or be refused with NOAUTH."""
    data = str(tmp_path)
    server = RedisProcess(password="pw-5", data_dir=data).start()
    env = {"REDIS_ADDR": server.addr, "REDIS_PASSWORD": "pw-5", "REDIS_DB": "5"}
    fast = FastRedis.from_settings(Settings.from_env(env))
    written = 0
    refused: list[str] = []
    in_flight = asyncio.Semaphore(64)
    stop = asyncio.Event()

    async def mark(i: int) -> None:
        nonlocal written
        try:
            await fast.command("SET", f"marker:{i}", "db5")
            written += 1
        except RedisError as exc:  # Redis is down for a moment: expected, and retried
            if "NOAUTH" in str(exc):
                refused.append(str(exc))
        finally:
            in_flight.release()

    async def arrivals() -> None:
        i = 0
        while not stop.is_set():
            await in_flight.acquire()
            i += 1
            asyncio.create_task(mark(i))  # noqa: RUF006 - the semaphore tracks it
            await asyncio.sleep(0)

    async def written_past(count: int) -> None:
        while written < count:
            await asyncio.sleep(0.01)

    load = asyncio.create_task(arrivals())
    try:
        for _ in range(3):
            await asyncio.wait_for(written_past(written + 200), 60)
            # restarted off the event loop, so commands keep arriving meanwhile
            await asyncio.to_thread(server.stop)
            server = await asyncio.to_thread(
                RedisProcess(server.port, password="pw-5", data_dir=data).start
            )
            await asyncio.wait_for(written_past(written + 200), 60)
        stop.set()
        await load
        for _ in range(64):  # every command in flight has finished
            await in_flight.acquire()
        db0 = aioredis.Redis(host="127.0.0.1", port=server.port, password="pw-5", db=0)
        db5 = aioredis.Redis(host="127.0.0.1", port=server.port, password="pw-5", db=5)
        try:
            assert await db0.dbsize() == 0
            assert await db5.dbsize() > 0
        finally:
            await db0.aclose()
            await db5.aclose()
        assert refused == []
    finally:
        stop.set()
        load.cancel()
        await fast.aclose()
        server.stop()
