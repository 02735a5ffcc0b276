"""The lean client behind Redis Sentinel: the sentinels name the master at every (re)connect,
and a master that turned replica (READONLY) is left at once."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from redis.exceptions import ConnectionError, ReadOnlyError, ResponseError, TimeoutError

from proxy.redis_client import Arg, FastRedis
from shared.config import RedisSettings, Secret


class SentinelFastRedis(FastRedis):
    """``FastRedis`` on whichever server the sentinels call master of ``sentinel_master``.
    The master is asked for on each new connection only (the fast path is the base class's);
    after a failover the old connection fails (Sentinel disconnects the demoted master's
    clients) or answers READONLY, and the next command reconnects through the sentinels."""

    def __init__(self, redis: RedisSettings, *, timeout: float = 1.0) -> None:
        super().__init__(redis, timeout=timeout)
        # Sentinels get TLS like the data nodes, but no ACL user or database of the data nodes.
        self._sentinels = [
            FastRedis(
                replace(redis.with_node(host, port), username="", password=Secret(""), db=0),
                timeout=timeout,
            )
            for host, port in redis.nodes
        ]

    async def command(self, *args: Arg) -> Any:
        try:
            return await super().command(*args)
        except ReadOnlyError:
            self._drop()
            raise

    async def pipeline(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        try:
            return await super().pipeline(commands)
        except ReadOnlyError:
            self._drop()
            raise

    def _drop(self) -> None:
        protocol = self._protocol
        if protocol is not None:
            protocol.fail(ConnectionError("the server is no longer the master"))

    async def _where(self) -> tuple[str, int]:
        failure: BaseException | None = None
        for i, sentinel in enumerate(self._sentinels):
            try:
                reply = await sentinel.command(
                    "SENTINEL", "get-master-addr-by-name", self.redis.sentinel_master
                )
            except (ConnectionError, TimeoutError, OSError, ResponseError) as exc:
                failure = exc
                continue
            if not reply:  # this sentinel does not know the name
                failure = ConnectionError(f"no master named {self.redis.sentinel_master!r}")
                continue
            if i:  # ask the one that answered first next time
                self._sentinels.insert(0, self._sentinels.pop(i))
            return reply[0].decode(), int(reply[1])
        raise ConnectionError(
            f"no sentinel of {self.redis.describe()} named the master ({failure})"
        )

    async def aclose(self) -> None:
        await super().aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()
