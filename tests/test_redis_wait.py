"""REDIS_WAIT_REPLICAS: a master killed right after acknowledging an XADD batch, its replica
promoted. Without WAIT the batch is gone with the master; with WAIT it was never taken as
sent, so the bus keeps it and delivers it to the new master."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.bus import RedisStreamsBus, make_bus
from shared.clock import new_id
from shared.config import ConfigError, Settings
from shared.events import RequestEvent
from shared.streams import EVENT_FIELD, shard_keys
from tests.pipeline_kit import wait_for
from tests.redis_topologies import Cluster, SentinelSet, require_redis_binaries, wait_until
from tests.services import RedisProcess
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.fault

KEY = "llm-proxy-events"


class Pair:
    """A master and its replica, reached through a TCP proxy standing in for the address a
    failover moves (a virtual IP, a Sentinel's answer). The replica's link to the master runs
    through a proxy of its own, so a test can cut replication without touching either server."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.master = RedisProcess(extra=("--dir", str(tmp))).start()
        self.link = TcpProxy("127.0.0.1", self.master.port).start()
        self.replica = self._replica_of(self.link.port, "replica")
        self.vip = TcpProxy("127.0.0.1", self.master.port).start()
        self.rejoined: RedisProcess | None = None

    def _replica_of(self, port: int, name: str) -> RedisProcess:
        home = self.tmp / name
        home.mkdir()
        node = RedisProcess(extra=("--dir", str(home), "--replicaof", "127.0.0.1", str(port)))
        node.start()
        wait_until(lambda: _linked(node), f"{name} to sync")
        return node

    def kill_master_and_promote(self) -> None:
        """SIGKILL the master, promote the replica, move the address to it, and give it a
        replica of its own (the old master's place rejoining, empty)."""
        assert self.master.proc is not None
        self.master.proc.kill()
        self.master.proc.wait(timeout=10)
        self.master.proc = None
        node(self.replica).execute_command("REPLICAOF", "NO", "ONE")
        wait_until(lambda: node(self.replica).execute_command("ROLE")[0] == b"master", "promotion")
        self.vip.stop()
        self.vip.target = ("127.0.0.1", self.replica.port)
        self.vip.start()
        self.rejoined = self._replica_of(self.replica.port, "rejoined")

    def cut_replication(self) -> None:
        """The replica hears nothing more from the master, nor the master from it."""
        self.link.freeze()
        self.link.blackhole()

    def stop(self) -> None:
        self.vip.stop()
        self.link.stop()
        for server in (self.rejoined, self.replica, self.master):
            if server is not None:
                server.stop()


def node(server: RedisProcess) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)


def _linked(server: RedisProcess) -> bool:
    info: Any = node(server).info("replication")
    return bool(info.get("master_link_status") == "up")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    require_redis_binaries()
    made = Pair(tmp_path)
    yield made
    made.stop()


def bus_with(spool: Path, **env: str) -> RedisStreamsBus:
    settings = Settings.from_env(
        {"LLM_PROXY_EVENT_BUS": "redis-streams", "EVENT_SPOOL_DIR": str(spool), **env}
    )
    bus = make_bus(settings, store=None)  # type: ignore[arg-type]  # the store is the memory bus's
    assert isinstance(bus, RedisStreamsBus)
    return bus


def bus_through(pair: Pair, spool: Path, wait_replicas: int) -> RedisStreamsBus:
    return bus_with(
        spool,
        REDIS_ADDR=f"127.0.0.1:{pair.vip.port}",
        REDIS_TIMEOUT="1s",
        REDIS_WAIT_REPLICAS=str(wait_replicas),
        REDIS_WAIT_TIMEOUT="100ms",
    )


async def sent(bus: RedisStreamsBus, n: int) -> list[RequestEvent]:
    """Publish ``n`` events on a started bus; return them once the bus counts them sent."""
    batch = events(n)
    for event in batch:
        bus.publish(event)
    await wait_for(lambda: _true(bus.published == n), timeout=60, what=f"{n} sent")
    assert bus.spooled == 0 and bus.redis_ok
    return batch


def events(n: int) -> list[RequestEvent]:
    return [
        RequestEvent(new_id(), f"req-{i}", time.time(), "", "", "POST", "/v1/chat/completions", 200)
        for i in range(n)
    ]


def ids_on(server: RedisProcess) -> set[str]:
    rows: Any = node(server).xrange(KEY)
    return {RequestEvent.from_bytes(fields[EVENT_FIELD]).event_id for _, fields in rows}


async def _true(value: bool) -> bool:
    return value


async def test_without_wait_a_killed_master_loses_what_it_acknowledged(
    pair: Pair, tmp_path: Path
) -> None:
    """The window the setting closes: the master acknowledged, the replica never got it."""
    bus = bus_through(pair, tmp_path / "spool", wait_replicas=0)
    await bus.start()
    pair.cut_replication()
    batch = events(30)
    for event in batch:
        bus.publish(event)
    await wait_for(lambda: _true(bus.published == 30), what="the master to acknowledge")
    assert bus.spooled == 0
    await asyncio.to_thread(pair.kill_master_and_promote)
    assert ids_on(pair.replica) == set()  # acknowledged, then lost
    await bus.close()


async def test_with_wait_a_killed_master_loses_nothing(pair: Pair, tmp_path: Path) -> None:
    bus = bus_through(pair, tmp_path / "spool", wait_replicas=1)
    await bus.start()
    before = events(10)
    for event in before:
        bus.publish(event)
    await wait_for(lambda: _true(bus.published == 10), what="replicated batches")
    assert bus.spooled == 0 and bus.redis_ok  # with the replica up, WAIT is met at once
    pair.cut_replication()
    during = events(30)
    for event in during:
        bus.publish(event)
    # the master holds them, the replica does not: WAIT says 0 of 1, the bus keeps them
    await wait_for(lambda: _true(bus.spooled >= 30), what="unreplicated batches spooled")
    assert not bus.redis_ok and bus.published == 10
    assert {e.event_id for e in during} <= ids_on(pair.master)
    await asyncio.to_thread(pair.kill_master_and_promote)
    await wait_for(lambda: _true(bus.pending() == 0), timeout=60, what="replay to the new master")
    recorded = await asyncio.to_thread(ids_on, pair.replica)
    assert {e.event_id for e in before + during} <= recorded
    assert bus.redis_ok and bus.dropped == 0 and bus.published == 40
    await bus.close()


def test_the_wait_timeout_must_fit_in_the_command_timeout() -> None:
    with pytest.raises(ConfigError, match="REDIS_WAIT_TIMEOUT must be less than REDIS_TIMEOUT"):
        Settings.from_env(
            {"REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT": "2s", "REDIS_TIMEOUT": "1s"}
        )
    with pytest.raises(ConfigError, match="REDIS_WAIT_REPLICAS must be"):
        Settings.from_env({"REDIS_WAIT_REPLICAS": "-1"})


async def test_on_a_cluster_each_master_waits_for_its_replica(tmp_path: Path) -> None:
    """Sharded streams on three masters: one WAIT per master written, in the same pipeline,
    and what the bus counts as sent is already on each stream's replica."""
    require_redis_binaries()
    cluster = Cluster().start()
    try:
        bus = bus_with(
            tmp_path / "spool",
            REDIS_MODE="cluster",
            REDIS_ADDR=cluster.addr,
            REDIS_STREAM_SHARDS="3",
            REDIS_WAIT_REPLICAS="1",
            REDIS_WAIT_TIMEOUT="500ms",
        )
        await bus.start()
        batch = await sent(bus, 60)
        keys = shard_keys(KEY, 3)
        assert len({cluster.master_of(k).port for k in keys}) > 1  # the test spans masters
        on_replicas: set[str] = set()
        for key in keys:
            replica = cluster.replica_of(cluster.master_of(key))
            reader = redis.Redis(
                host="127.0.0.1", port=replica.port, socket_timeout=5, single_connection_client=True
            )
            reader.execute_command("READONLY")
            rows: Any = reader.xrange(key)
            on_replicas |= {RequestEvent.from_bytes(f[EVENT_FIELD]).event_id for _, f in rows}
            reader.close()
        assert on_replicas == {e.event_id for e in batch}
        await bus.close()
    finally:
        cluster.stop()


async def test_through_sentinel_what_is_sent_is_on_both_replicas(tmp_path: Path) -> None:
    require_redis_binaries()
    sentinels = SentinelSet().start()
    try:
        bus = bus_with(
            tmp_path / "spool",
            REDIS_MODE="sentinel",
            REDIS_ADDR=sentinels.addr,
            REDIS_SENTINEL_MASTER=sentinels.name,
            REDIS_WAIT_REPLICAS="2",
            REDIS_WAIT_TIMEOUT="500ms",
        )
        await bus.start()
        batch = await sent(bus, 40)
        master = sentinels.master_port()
        replicas = [s for s in sentinels.servers if s.port != master]
        assert len(replicas) == 2
        for replica in replicas:  # read at once: WAIT 2 said both hold the batch
            assert ids_on(replica) == {e.event_id for e in batch}
        await bus.close()
    finally:
        sentinels.stop()
