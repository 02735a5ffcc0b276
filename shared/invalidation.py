"""Telling every proxy worker that a token or project changed, so cached lookups are dropped.

Two channels, used together: a row in the ``changes`` table, which every worker polls about once
a second (works with any store and survives missed messages), and a Redis pub/sub message, which
reaches workers at once when Redis is in use.
"""

from __future__ import annotations

import hashlib
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.config import Settings
from shared.store import SqlStore

log = logging.getLogger("llm_proxy.invalidation")


def channel(settings: Settings) -> str:
    """This deployment's pub/sub channel. Pub/sub ignores the database number, so the name
    carries what keeps deployments' keys apart on one Redis (the database, the cache prefix,
    the limiter prefix, the stream key): deployments sharing a Redis do not hear each other's
    purges and token drops as long as their keys are apart; replicas of one deployment, set
    alike, share the name."""
    namespaces = "\n".join(
        (
            str(settings.redis.db),
            settings.redis_cache_key_prefix,
            settings.distributed_rate_limit_prefix,
            settings.redis_stream_key,
        )
    )
    return "llm-proxy:invalidate:" + hashlib.sha256(namespaces.encode()).hexdigest()[:16]


def encode(kind: str, target_id: str) -> bytes:
    return f"{kind}:{target_id}".encode()


def decode(message: bytes | str) -> tuple[str, str] | None:
    text = message.decode() if isinstance(message, bytes) else message
    kind, sep, target = text.partition(":")
    if not sep or kind not in ("token", "project", "cache"):
        return None
    return kind, target


def purge_target(project_id: str | None, path_prefix: str | None) -> str:
    return json.dumps([project_id, path_prefix])


def parse_purge_target(target: str) -> tuple[str | None, str | None]:
    try:
        project_id, path_prefix = json.loads(target)
    except (ValueError, TypeError):
        return None, "/"  # unreadable: purge everything rather than keep stale answers
    return project_id, path_prefix


class Notifier:
    """The ``ChangeNotifier`` of shared.management: writes the change log, publishes on Redis
    (on ``channel``, this deployment's: see ``channel()``)."""

    def __init__(
        self, store: SqlStore, redis: aioredis.Redis | None = None, *, channel: str = ""
    ) -> None:
        if redis is not None and not channel:
            raise ValueError("publishing on Redis needs the deployment's channel")
        self.store = store
        self.redis = redis
        self.channel = channel

    async def tokens_changed(self, token_ids: list[str]) -> None:
        await self._changed("token", token_ids)

    async def project_changed(self, project_id: str) -> None:
        await self._changed("project", [project_id])

    async def cache_purged(self, project_id: str | None, path_prefix: str | None) -> None:
        await self._changed("cache", [purge_target(project_id, path_prefix)])

    async def _changed(self, kind: str, ids: list[str]) -> None:
        await self.store.record_changes(kind, ids)
        if self.redis is None:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for target_id in ids:
                    pipe.publish(self.channel, encode(kind, target_id))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # the change log still reaches every worker within the poll interval
            log.warning("could not publish invalidation on Redis: %s", exc)
