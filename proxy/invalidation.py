"""Worker side of invalidation: poll the change log, and listen on Redis pub/sub when present."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.auth import StoreHealth, TokenCache
from proxy.cache import CacheBackend
from shared.invalidation import decode, parse_purge_target
from shared.redis import prepare_pubsub
from shared.store import SqlStore

log = logging.getLogger("llm_proxy.invalidation")


class Invalidator:
    def __init__(
        self,
        store: SqlStore,
        cache: TokenCache,
        *,
        interval: float,
        redis: aioredis.Redis | None = None,
        channel: str = "",
        responses: CacheBackend | None = None,
        health: StoreHealth | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.health = health or StoreHealth()
        # this worker's own response cache (in-memory backend): purges reach it through here
        self.responses = responses
        self.interval = interval
        self.redis = redis
        self.channel = channel  # this deployment's (shared.invalidation.channel)
        if redis is not None and not channel:
            raise ValueError("listening on Redis needs the deployment's channel")
        self._last_id = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        try:
            self._last_id = await self.store.last_change_id()
        except Exception as exc:  # the store may not be up yet; poll from zero later
            log.warning("change log unavailable at start: %s", exc)
        self._tasks.append(asyncio.create_task(self._poll(), name="invalidation-poll"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="invalidation-pubsub"))

    async def apply(self, kind: str, target_id: str) -> None:
        if kind != "cache":
            self.cache.drop(kind, target_id)
        elif self.responses is not None:
            project_id, path_prefix = parse_purge_target(target_id)
            await self.responses.purge(project_id, path_prefix)

    async def poll_once(self) -> None:
        for change_id, kind, target_id in await self.store.changes_since(self._last_id):
            await self.apply(kind, target_id)
            self._last_id = change_id

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll_once()
            except Exception as exc:
                # The cache is kept: the next poll that succeeds applies every change missed
                # meanwhile (it reads from the last id seen), pub/sub still delivers at once,
                # and each entry's own outage TTL bounds how long it may be used unconfirmed.
                self.health.failed(time.time(), exc)
                log.debug("polling the change log failed: %s", exc)
            else:
                self.health.answered(time.time())

    async def _listen(self) -> None:
        assert self.redis is not None
        while True:
            try:
                await prepare_pubsub(self.redis)
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    while True:
                        # get_message waits without tripping the client's socket timeout
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        parsed = decode(message.get("data", b""))
                        if parsed is not None:
                            await self.apply(*parsed)
            except (RedisError, OSError) as exc:
                log.warning("invalidation channel lost (%s); the change log still applies", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
