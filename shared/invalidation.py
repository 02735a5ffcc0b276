"""Telling every proxy worker that a token or project changed, so cached lookups are dropped.

Two channels, used together: a row in the ``changes`` table, which every worker polls about once
a second (works with any store and survives missed messages), and a Redis pub/sub message, which
reaches workers at once when Redis is in use.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.store import SqlStore

log = logging.getLogger("llm_proxy.invalidation")

CHANNEL = "llm-proxy:invalidate"


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
    """The ``ChangeNotifier`` of shared.management: writes the change log, publishes on Redis."""

    def __init__(self, store: SqlStore, redis: aioredis.Redis | None = None) -> None:
        self.store = store
        self.redis = redis

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
                    pipe.publish(CHANNEL, encode(kind, target_id))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # the change log still reaches every worker within the poll interval
            log.warning("could not publish invalidation on Redis: %s", exc)
