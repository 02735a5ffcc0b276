"""The proxy's lean Redis client for the request path: one connection per process, commands
multiplexed in order on it, and every command issued in one event-loop tick written with one
system call.

redis-py spends about 100 µs of CPU per command here (pool, connection checks, packing,
retries); this spends a few. It speaks only what the hot path needs (RESP2 commands with bulk
replies, errors; TLS, ACL ``AUTH user password`` and SELECT at connect) and raises redis-py's
exception classes, so callers handle failures the same way with either client. It is built from
the same ``RedisSettings`` as redis-py. Everything else keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections import deque
from typing import Any, cast

import hiredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from shared.config import RedisSettings, Settings

Arg = bytes | str | int | float


def encode(args: tuple[Arg, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _error(reply: hiredis.ReplyError) -> RedisError:
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(text)
    if text.startswith("READONLY"):
        return ReadOnlyError(text)
    if text.startswith("LOADING"):  # a restarted Redis still reading its data: "down" for now
        return BusyLoadingError(text)
    return ResponseError(text)


class _Protocol(asyncio.Protocol):
    """One connection: its own waiters and unsent commands, so nothing of a dead connection
    can leak onto the next one."""

    def __init__(self, client: FastRedis) -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while (reply := self.reader.gets()) is not False:
            if not pending:  # a reply nobody waits for: the stream is out of step
                self.fail(ConnectionError("unexpected reply from Redis"))
                return
            future = pending.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self)
        self._fail_waiters(ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        """Abandon this connection: every waiter gets ``exc``, the socket is dropped."""
        self.client._lost(self)
        self._fail_waiters(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiters(self, exc: Exception) -> None:
        pending, self.pending = self.pending, deque()
        self.out = []
        for future in pending:
            if not future.done():
                future.set_exception(exc)


class FastRedis:
    """``await client.command("GET", key)``; a few redis-py-style helpers below.

    A connection is published (``_protocol``) only once AUTH and SELECT are answered, on the
    first connect and on every reconnect; commands issued meanwhile wait for it, then go out on
    the right database as the right user. The fast path checks that one attribute.
    """

    def __init__(self, redis: RedisSettings, *, timeout: float = 1.0) -> None:
        self.redis = redis
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._flush_scheduled = False

    @classmethod
    def from_settings(cls, settings: Settings) -> FastRedis:
        """The client for the deployment's shape: this one for a single server; with
        REDIS_MODE=cluster or sentinel, the subclass that finds the right server first."""
        redis = settings.redis
        if redis.mode == "cluster":
            from proxy.redis_cluster import ClusterFastRedis

            return ClusterFastRedis(redis, timeout=settings.redis_timeout)
        if redis.mode == "sentinel":
            from proxy.redis_sentinel import SentinelFastRedis

            return SentinelFastRedis(redis, timeout=settings.redis_timeout)
        return cls(redis, timeout=settings.redis_timeout)

    async def command(self, *args: Arg) -> Any:
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.pending.append(future)
        protocol.out.append(encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, protocol)
        timer = loop.call_later(self.timeout, self._expire, future, protocol)
        try:
            return await future
        finally:
            timer.cancel()

    async def pipeline(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        """Every command's reply, in order: all written together, one timer for the lot. An
        error reply raises (the first one, once every reply is in: all of them ran)."""
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in commands]
        protocol.pending.extend(futures)
        protocol.out.append(b"".join([encode(args) for args in commands]))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, protocol)
        last = futures[-1]
        timer = loop.call_later(self.timeout, self._expire, last, protocol)
        try:
            with contextlib.suppress(RedisError):
                await last  # replies come in order: when the last is in, all are
        finally:
            timer.cancel()
        for future in futures:
            error = future.exception()
            if error is not None:
                for other in futures:
                    other.exception()  # retrieved: one error is raised for the batch
                raise error
        return [future.result() for future in futures]

    async def replicated(
        self, commands: list[tuple[Arg, ...]], replicas: int, timeout_ms: int
    ) -> list[int]:
        """``commands`` as one pipeline ending with ``WAIT replicas timeout_ms``, which covers
        the writes this connection made before it: how many replicas acknowledged them, one
        count per master written (one here)."""
        replies = await self.pipeline([*commands, ("WAIT", replicas, timeout_ms)])
        return [int(replies[-1])]

    async def asking(self, *args: Arg) -> Any:
        """``ASKING`` then ``args``, adjacent on the connection (a Cluster ASK redirect: the
        target node serves the one next command for a slot it is importing)."""
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        ask: asyncio.Future[Any] = loop.create_future()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.pending.extend((ask, future))
        protocol.out.append(encode(("ASKING",)) + encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, protocol)
        timer = loop.call_later(self.timeout, self._expire, future, protocol)
        try:
            outcomes: tuple[Any, Any] = await asyncio.gather(ask, future, return_exceptions=True)
        finally:
            timer.cancel()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes[1]

    def _flush(self, protocol: _Protocol) -> None:
        self._flush_scheduled = False
        out, protocol.out = protocol.out, []
        if protocol.transport is not None and out:
            protocol.transport.write(b"".join(out))
        current = self._protocol
        if current is not None and current is not protocol and current.out:
            # commands queued on a newer connection in the same tick
            self._flush(current)

    def _expire(self, future: asyncio.Future[Any], protocol: _Protocol) -> None:
        if not future.done():
            # Replies would now come out of step with the waiters: start afresh.
            protocol.fail(TimeoutError(f"Redis did not answer within {self.timeout}s"))

    def _lost(self, protocol: _Protocol) -> None:
        if protocol is self._protocol:
            self._protocol = None

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = connecting = loop.create_future()
        try:
            protocol = await asyncio.wait_for(self._open(), self.timeout)
        except builtins.TimeoutError:  # the name TimeoutError is redis-py's in this module
            exc: BaseException = TimeoutError(
                f"Redis at {self.redis.describe()} did not answer within {self.timeout}s"
            )
            connecting.set_exception(exc)
            connecting.exception()  # retrieved: waiters re-raise it
            raise exc from None
        except BaseException as exc:
            connecting.set_exception(exc)
            connecting.exception()
            raise
        else:
            self._protocol = protocol
            connecting.set_result(protocol)
            return protocol
        finally:
            self._connecting = None

    async def _open(self) -> _Protocol:
        """Connect (TLS when configured), then AUTH and SELECT, both answered, before anyone
        else may use the connection."""
        redis = self.redis
        loop = asyncio.get_running_loop()
        context = redis.ssl_context()
        host, port = await self._where()
        try:
            _, protocol = await loop.create_connection(
                lambda: _Protocol(self),
                host,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
        except OSError as exc:  # ssl.SSLError included
            raise ConnectionError(f"cannot connect to Redis at {redis.describe()}: {exc}") from None
        hello: list[tuple[Arg, ...]] = []
        if redis.username:
            hello.append(("AUTH", redis.username, redis.password.get()))
        elif redis.password:
            hello.append(("AUTH", redis.password.get()))
        if redis.db:
            hello.append(("SELECT", redis.db))
        if not hello:
            return protocol
        futures = [loop.create_future() for _ in hello]
        protocol.pending.extend(futures)
        assert protocol.transport is not None
        protocol.transport.write(b"".join(encode(args) for args in hello))
        try:
            for future in futures:
                await future
        except BaseException:
            protocol.fail(ConnectionError("Redis connection set-up failed"))
            raise
        return protocol

    async def _where(self) -> tuple[str, int]:
        """The server to connect to (asked once per connection, not per command)."""
        return self.redis.host, self.redis.port

    # --- the commands the hot path uses, named as in redis-py ---

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self.command("GET", key)
        return result

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Arg) -> Any:
        return await self.command("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str) -> str:
        sha: bytes = await self.command("SCRIPT", "LOAD", script)
        return sha.decode()

    async def zrem(self, key: str, *members: Arg) -> int:
        removed: int = await self.command("ZREM", key, *members)
        return removed

    async def ping(self) -> bool:
        return bool(await self.command("PING") == b"PONG")

    async def aclose(self) -> None:
        protocol = self._protocol
        if protocol is not None:
            protocol.fail(ConnectionError("client closed"))
