"""The lean Redis client against real servers: replies in order under concurrency, errors as
redis-py's classes, AUTH/SELECT, a server that dies or stalls."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from proxy.redis_client import FastRedis
from shared.config import RedisSettings, Settings
from tests.services import RedisProcess, free_port


@pytest.fixture
async def fast(redis_env: dict[str, str]) -> AsyncIterator[FastRedis]:
    client = FastRedis.from_settings(Settings.from_env(redis_env))
    yield client
    await client.aclose()


async def test_concurrent_commands_get_their_own_replies(
    fast: FastRedis, unique_prefix: str
) -> None:
    keys = [f"{unique_prefix}k{i}" for i in range(200)]
    await asyncio.gather(*(fast.command("SET", k, f"v{i}", "EX", 60) for i, k in enumerate(keys)))
    values = await asyncio.gather(*(fast.get(k) for k in keys))
    assert values == [f"v{i}".encode() for i in range(200)]
    assert await fast.get(f"{unique_prefix}missing") is None
    assert await fast.command("DEL", *keys) == 200


async def test_scripts_and_error_replies(fast: FastRedis, unique_prefix: str) -> None:
    sha = await fast.script_load("return {KEYS[1], tonumber(ARGV[1]) + 1}")
    assert await fast.evalsha(sha, 1, f"{unique_prefix}x", 41) == [f"{unique_prefix}x".encode(), 42]
    with pytest.raises(NoScriptError):
        await fast.evalsha("0" * 40, 0)
    await fast.command("SET", f"{unique_prefix}s", "text", "EX", 60)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await fast.command("ZADD", f"{unique_prefix}s", 1, "m")
    assert await fast.ping()  # an error reply leaves the connection usable


async def test_a_pipeline_answers_in_order_and_an_error_fails_it_after_all_ran(
    fast: FastRedis, unique_prefix: str
) -> None:
    key, text = f"{unique_prefix}stream", f"{unique_prefix}text"
    ids = await fast.pipeline([("XADD", key, "*", "e", f"line{i}") for i in range(50)])
    entries = await fast.command("XRANGE", key, "-", "+")
    assert [e[0] for e in entries] == ids and [e[1][1] for e in entries][:2] == [b"line0", b"line1"]
    await fast.command("SET", text, "text", "EX", 60)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await fast.pipeline(
            [("XADD", key, "*", "e", "before"), ("XADD", text, "*", "e", "x"), ("INCR", key + "n")]
        )
    assert await fast.command("XLEN", key) == 51  # the commands around the error ran
    assert await fast.get(key + "n") == b"1"
    assert await fast.pipeline([("PING",)]) == [b"PONG"]  # the connection is still in step
    await fast.command("DEL", key, text, key + "n")


async def test_password_and_database(tmp_path: object) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--requirepass",
            "s3cret",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)
        env = {"REDIS_ADDR": f"127.0.0.1:{port}", "REDIS_PASSWORD": "s3cret", "REDIS_DB": "3"}
        client = FastRedis.from_settings(Settings.from_env(env))
        await client.command("SET", "where", "db3")
        assert await client.command("CLIENT", "INFO") is not None
        info = (await client.command("CLIENT", "INFO")).decode()
        assert " db=3 " in info
        await client.aclose()
        wrong = FastRedis.from_settings(Settings.from_env({**env, "REDIS_PASSWORD": "nope"}))
        with pytest.raises(Exception, match=r"WRONGPASS|invalid"):
            await wrong.get("where")
        await wrong.aclose()
    finally:
        proc.terminate()
        proc.wait()


async def test_a_dead_server_fails_fast_and_a_restarted_one_works_again() -> None:
    server = RedisProcess().start()
    client = FastRedis(RedisSettings("127.0.0.1", server.port), timeout=1.0)
    assert await client.ping()
    server.stop()
    await asyncio.sleep(0.1)
    with pytest.raises(ConnectionError):
        await client.get("k")
    server = RedisProcess(server.port).start()
    try:
        assert await client.ping()
    finally:
        await client.aclose()
        server.stop()


async def test_a_stalled_server_times_out_then_recovers() -> None:
    server = RedisProcess().start()
    admin = FastRedis(RedisSettings("127.0.0.1", server.port), timeout=5.0)
    client = FastRedis(RedisSettings("127.0.0.1", server.port), timeout=0.3)
    try:
        assert await client.ping()
        await admin.command("CLIENT", "PAUSE", 1000, "ALL")
        with pytest.raises(TimeoutError):
            await client.get("k")
        await asyncio.sleep(1.0)
        assert await client.ping()  # a fresh connection, replies in step again
    finally:
        await admin.aclose()
        await client.aclose()
        server.stop()
