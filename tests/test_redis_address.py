"""One Redis address for both clients: the database, the ACL user and TLS of REDIS_ADDR reach
redis-py and the lean client alike, on first connect and after every reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ConnectionError, RedisError

from dispatcher.sinks import make_broker
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


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisProcess, RedisProcess, TlsFiles]]:
    """One plain and one TLS-only Redis, each with the default user (no password) and alice."""
    tls = make_tls_files(tmp_path_factory.mktemp("tls"))
    plain = RedisProcess(extra=ALICE).start()
    secure = RedisProcess(tls=tls, extra=ALICE).start()
    yield plain, secure, tls
    plain.stop()
    secure.stop()


#: (address form, its environment with {plain}/{tls} for the servers' host:port, db, user)
FORMS = [
    ("host:port", {"REDIS_ADDR": "{plain}"}, "0", "default"),
    ("redis://", {"REDIS_ADDR": "redis://{plain}"}, "0", "default"),
    (
        "redis:// user, password, db",
        {"REDIS_ADDR": "redis://alice:alice-pw@{plain}/4"},
        "4",
        "alice",
    ),
    ("host:port + REDIS_DB", {"REDIS_ADDR": "{plain}", "REDIS_DB": "2"}, "2", "default"),
    (
        "redis:///db + the same REDIS_DB",
        {"REDIS_ADDR": "redis://{plain}/3", "REDIS_DB": "3"},
        "3",
        "default",
    ),
    (
        "host:port + REDIS_USERNAME + REDIS_PASSWORD",
        {"REDIS_ADDR": "{plain}", "REDIS_USERNAME": "alice", "REDIS_PASSWORD": "alice-pw"},
        "0",
        "alice",
    ),
    ("rediss:// /db", {"REDIS_ADDR": "rediss://{tls}/6"}, "6", "default"),
    (
        "rediss:// user + REDIS_DB",
        {"REDIS_ADDR": "rediss://alice:alice-pw@{tls}", "REDIS_DB": "1"},
        "1",
        "alice",
    ),
    (
        "rediss:// + REDIS_USERNAME",
        {"REDIS_ADDR": "rediss://:alice-pw@{tls}/7", "REDIS_USERNAME": "alice"},
        "7",
        "alice",
    ),
]


@pytest.mark.parametrize(("form", "env", "db", "user"), FORMS, ids=[f[0] for f in FORMS])
async def test_every_address_form_reaches_the_same_database_as_the_same_user(
    servers: tuple[RedisProcess, RedisProcess, TlsFiles],
    form: str,
    env: dict[str, str],
    db: str,
    user: str,
) -> None:
    plain, secure, tls = servers
    filled = {k: v.format(plain=plain.addr, tls=secure.addr) for k, v in env.items()}
    if secure.addr in filled["REDIS_ADDR"]:
        filled["REDIS_TLS_CA_FILE"] = tls.ca
    settings = Settings.from_env(filled)
    slow_info, fast_info = await both_infos(settings)
    broker = make_broker(settings)
    try:
        broker_info = client_info(broker.client.execute_command("CLIENT", "INFO"))
    finally:
        broker.client.close()
    assert (slow_info["db"], slow_info["user"]) == (db, user)
    assert (fast_info["db"], fast_info["user"]) == (db, user)
    assert (broker_info["db"], broker_info["user"]) == (db, user)


async def test_tls_trusts_the_system_store_which_honours_ssl_cert_file(
    servers: tuple[RedisProcess, RedisProcess, TlsFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secure, tls = servers
    settings = Settings.from_env({"REDIS_ADDR": f"rediss://{secure.addr}"})
    fast = FastRedis.from_settings(settings)
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await fast.ping()  # our test CA is in no system store
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca)
    slow_info, fast_info = await both_infos(settings)
    assert slow_info["db"] == fast_info["db"] == "0"
    await fast.aclose()


async def test_a_wrong_password_is_an_authentication_error_not_a_hang(
    servers: tuple[RedisProcess, RedisProcess, TlsFiles],
) -> None:
    plain, _, _ = servers
    env = {"REDIS_ADDR": f"redis://alice:wrong@{plain.addr}/3"}
    fast = FastRedis.from_settings(Settings.from_env(env))
    with pytest.raises(AuthenticationError, match="WRONGPASS"):
        await fast.get("k")
    with pytest.raises(AuthenticationError, match="WRONGPASS"):
        await fast.get("k")  # and again on the next attempt, not a half-open connection
    await fast.aclose()
