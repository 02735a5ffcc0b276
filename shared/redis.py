"""Building redis-py clients from the one ``RedisSettings``: address, user, database, TLS, and
the deployment's shape (one server, a Cluster, or a master found through sentinels)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import redis as redis_sync
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.sentinel import Sentinel as SyncSentinel

from shared.config import RedisSettings, Settings

log = logging.getLogger("llm_proxy.redis")


def connection_kwargs(redis: RedisSettings) -> dict[str, Any]:
    """What redis-py's ``Redis(...)`` (asyncio or not) needs to reach ``redis``: each part
    given explicitly, so no client parses the address a second time."""
    kwargs: dict[str, Any] = {
        "host": redis.host,
        "port": redis.port,
        "db": redis.db,
        "username": redis.username or None,
        "password": redis.password.get() or None,
    }
    if redis.tls:
        kwargs.update(
            ssl=True,
            ssl_ca_certs=redis.ca_file or None,  # None: the system store
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
        )
    return kwargs


def make_redis(
    settings: Settings, *, timeout: float | None = None, **kwargs: Any
) -> aioredis.Redis:
    """An asyncio Redis client (a connection pool, opened lazily). ``timeout`` overrides
    REDIS_TIMEOUT for callers that block on purpose (XREADGROUP BLOCK).

    REDIS_MODE=cluster gives redis-py's ``RedisCluster`` (slot map from the seed nodes,
    MOVED/ASK followed, one pool per node); it answers every command the callers use, with
    keys placed so multi-key commands stay in one slot, and is typed as ``Redis`` for them.
    REDIS_MODE=sentinel gives a ``Redis`` whose pool asks the sentinels for the master and
    asks again after a failover (a connection error or READONLY)."""
    seconds = settings.redis_timeout if timeout is None else timeout
    redis = settings.redis
    options: dict[str, Any] = {
        **connection_kwargs(redis),
        "socket_timeout": seconds,
        "socket_connect_timeout": seconds,
        "health_check_interval": 30,
        **kwargs,
    }
    if redis.mode == "cluster":
        for name in ("host", "port", "db", "health_check_interval"):
            options.pop(name)
        if "retry" in options:
            # A caller that wants no retries still gets one here: redis-py's Cluster client
            # re-reads the slot map only on a retry, so with none it keeps calling a dead
            # master forever. One immediate retry after a failover costs one more attempt.
            options["retry"] = Retry(NoBackoff(), 1)
        return cast(
            aioredis.Redis,
            RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis.nodes], **options),
        )
    if redis.mode == "sentinel":
        master = sentinel(redis, seconds).master_for(
            redis.sentinel_master,
            redis_class=aioredis.Redis,
            **{k: v for k, v in options.items() if k not in ("host", "port")},
        )
        return cast(aioredis.Redis, master)
    return aioredis.Redis(**options)


def make_sync_redis(settings: Settings, **kwargs: Any) -> redis_sync.Redis:
    """The blocking counterpart of ``make_redis``, for the dramatiq broker."""
    redis = settings.redis
    options: dict[str, Any] = {**connection_kwargs(redis), **kwargs}
    if redis.mode == "cluster":
        for name in ("host", "port", "db"):
            options.pop(name)
        nodes = [SyncClusterNode(h, p) for h, p in redis.nodes]  # type: ignore[no-untyped-call]
        return cast(redis_sync.Redis, SyncRedisCluster(startup_nodes=nodes, **options))
    if redis.mode == "sentinel":
        seconds = float(kwargs.get("socket_connect_timeout") or settings.redis_timeout)
        tls = {k: v for k, v in options.items() if k.startswith("ssl")}
        sentinels = SyncSentinel(  # type: ignore[no-untyped-call]
            list(redis.nodes),
            sentinel_kwargs={"socket_timeout": seconds, "socket_connect_timeout": seconds, **tls},
        )
        master = sentinels.master_for(  # type: ignore[no-untyped-call]
            redis.sentinel_master,
            **{k: v for k, v in options.items() if k not in ("host", "port")},
        )
        return cast(redis_sync.Redis, master)
    return redis_sync.Redis(**options)


def sentinel(redis: RedisSettings, seconds: float) -> Sentinel:
    """The sentinels of ``redis``, reached with its TLS (sentinels take no ACL user here)."""
    tls = {k: v for k, v in connection_kwargs(redis).items() if k.startswith("ssl")}
    return Sentinel(  # type: ignore[no-untyped-call]
        list(redis.nodes),
        sentinel_kwargs={"socket_timeout": seconds, "socket_connect_timeout": seconds, **tls},
    )


def is_cluster(redis: aioredis.Redis) -> bool:
    return isinstance(redis, RedisCluster)


async def prepare_pubsub(redis: aioredis.Redis) -> None:
    """Before ``redis.pubsub()``: a Cluster client must hold its slot map (redis-py's cluster
    pub/sub picks the channel's node from it and does not read it itself). Plain PUBLISH is
    relayed to every node of a Cluster, so subscribers anywhere hear it."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()


def uses_redis(settings: Settings) -> bool:
    """Whether any enabled feature keeps state in Redis (then token revocations are also
    pushed to every worker over Redis pub/sub)."""
    return (
        settings.event_bus == "redis-streams"
        or settings.distributed_rate_limit_enabled
        or (settings.http_cache_enabled and settings.http_cache_backend == "redis")
    )


async def reachable(redis: aioredis.Redis, seconds: float) -> bool:
    """Whether Redis answers PING within ``seconds``. A failed PING is tried once more on a new
    connection: after a blip the pooled connections may be dead (silently, if the network
    dropped them) while Redis itself is fine, and a readiness probe must report Redis, not a
    stale socket. This does not lean on redis-py's retry defaults, which vary by version."""
    for attempt in range(2):
        try:
            if attempt and not is_cluster(redis):
                # idle connections shared the dead one's fate; in-use ones reconnect themselves
                # (a Cluster client drops a failed node's connections by itself)
                await redis.connection_pool.disconnect(inuse_connections=False)
            await asyncio.wait_for(redis.ping(), seconds)
            return True
        except Exception as exc:  # any failure: look again on a fresh connection, then say down
            log.debug("Redis PING failed (attempt %d): %r", attempt + 1, exc)
    return False
