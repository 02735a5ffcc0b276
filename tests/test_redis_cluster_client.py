"""The lean client on a real Redis Cluster while a slot moves: ASK during the migration, MOVED
after it, the slot map followed, and a dead node reported as Redis being down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.exceptions import ConnectionError

from proxy.redis_cluster import ClusterFastRedis, key_slot
from shared.config import Settings
from tests.redis_topologies import Cluster, require_redis_binaries

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    require_redis_binaries()
    running = Cluster().start()
    yield running
    running.stop()


def lean(cluster: Cluster) -> ClusterFastRedis:
    # one seed is enough: the rest comes from the slot map
    env = {"REDIS_MODE": "cluster", "REDIS_ADDR": cluster.nodes[0].addr}
    client = ClusterFastRedis.from_settings(Settings.from_env(env))
    assert isinstance(client, ClusterFastRedis)
    return client


def test_slot_hash_is_redis_own() -> None:
    """Compared with what a real server answers to CLUSTER KEYSLOT (covered in the next test);
    here the published examples: hash tags pick the hashed part."""
    assert key_slot("123456789") == 12739  # the CRC16 check value, mod 16384
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")


async def test_follows_ask_then_moved_while_a_slot_migrates(cluster: Cluster) -> None:
    key = "{migrating}k"
    source = cluster.master_of(key)
    target = next(n for n in cluster.primaries() if n is not source)
    src, dst = cluster.client(source), cluster.client(target)
    slot = int(src.cluster("keyslot", key))
    assert key_slot(key) == slot
    src.set(key, b"v1")
    client = lean(cluster)
    try:
        assert await client.get(key) == b"v1"
        src_id = src.execute_command("CLUSTER", "MYID").decode()
        dst_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        src.execute_command("MIGRATE", "127.0.0.1", target.port, key, 0, 5000)
        # mid-migration the source answers ASK: the key is read from the target once
        assert await client.get(key) == b"v1"
        assert await client.get("{migrating}absent") is None
        for node in cluster.primaries():
            cluster.client(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        # done: the source answers MOVED, and the client then goes to the target directly
        assert await client.get(key) == b"v1"
        assert await client.command("SET", key, b"v2") == b"OK"
        assert dst.get(key) == b"v2"
    finally:
        await client.aclose()


async def test_a_dead_master_reads_as_redis_down_until_its_replica_serves(
    cluster: Cluster,
) -> None:
    key = "{dies}k"
    redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port).set(key, b"kept")
    client = lean(cluster)
    try:
        assert await client.get(key) == b"kept"
        master = cluster.master_of(key)
        replica = cluster.replica_of(master)
        cluster.client(master).execute_command("WAIT", 1, 5000)  # the value is on the replica
        assert master.proc is not None
        master.proc.kill()
        master.proc.wait(timeout=10)
        master.proc = None
        with pytest.raises(ConnectionError):
            await client.get(key)
        cluster.wait_promoted(replica)
        assert await client.get(key) == b"kept"  # replicated before the kill, now on the replica
    finally:
        await client.aclose()
