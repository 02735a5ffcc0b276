"""The Redis cache backend on a real Redis Cluster: entries stored, found and purged, with
projects spread over the Cluster's slots."""

from __future__ import annotations

import pytest
import redis

from proxy.cache import RedisBackend
from shared.config import Settings
from shared.redis import make_redis
from tests.redis_topologies import Cluster

pytestmark = pytest.mark.cluster


async def test_purge_removes_entries_on_every_master(
    redis_cluster: Cluster, cluster_env: dict[str, str], unique_prefix: str
) -> None:
    prefix = f"{unique_prefix}cache:"
    raw = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    projects = [f"proj{i}" for i in range(12)]
    for project in projects:  # an entry and its index member, as a store leaves them
        raw.set(f"{prefix}{{{project}}}:k", b"entry", px=60_000)
        raw.zadd(f"{prefix}{{{project}}}:idx", {b"ek /v1/models": 9e12})
    assert len({redis_cluster.master_of(f"{{{p}}}").port for p in projects}) > 1
    client = make_redis(Settings.from_env(cluster_env))
    try:
        backend = RedisBackend(client, prefix=prefix)
        assert await backend.purge(projects[0]) == 1
        assert raw.exists(f"{prefix}{{{projects[0]}}}:k") == 0
        assert raw.exists(f"{prefix}{{{projects[1]}}}:k") == 1
        assert await backend.purge() == len(projects) - 1  # every master scanned
        assert sum(raw.exists(f"{prefix}{{{p}}}:k") for p in projects) == 0
    finally:
        await client.aclose()
        raw.close()
