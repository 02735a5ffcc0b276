"""A lean Redis client for the request path: one connection per process, commands multiplexed in
order on it, and every command issued in one event-loop tick written with one system call.

redis-py spends about 100 µs of CPU per command here (pool, connection checks, packing,
retries); this spends a few. It speaks only what the hot path needs (RESP2 commands with bulk
replies, errors, AUTH and SELECT) and raises redis-py's exception classes, so callers handle
failures the same way with either client. Everything else keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import builtins
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

from shared.config import Settings
from shared.redis import redis_url

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
    def __init__(self, client: FastRedis) -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.client._pending
        while (reply := self.reader.gets()) is not False:
            if not pending:  # a reply nobody waits for: the stream is out of step
                self.client._broken(ConnectionError("unexpected reply from Redis"))
                return
            future = pending.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self, exc)


class FastRedis:
    """``await client.command("GET", key)``; a few redis-py-style helpers below."""

    def __init__(
        self, host: str, port: int, *, db: int = 0, password: str = "", timeout: float = 1.0
    ) -> None:
        self.host, self.port, self.db, self.password = host, port, db, password
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False

    @classmethod
    def from_settings(cls, settings: Settings) -> FastRedis:
        from urllib.parse import urlsplit

        parts = urlsplit(redis_url(settings))
        if parts.scheme != "redis":
            raise ValueError("the fast Redis client speaks plain redis:// only")
        return cls(
            parts.hostname or "localhost",
            parts.port or 6379,
            db=settings.redis_db,
            password=settings.redis_password.get() or (parts.password or ""),
            timeout=settings.redis_timeout,
        )

    async def command(self, *args: Arg) -> Any:
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(future)
        self._out.append(encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, protocol)
        timer = loop.call_later(self.timeout, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _flush(self, protocol: _Protocol) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if protocol is self._protocol and protocol.transport is not None and out:
            protocol.transport.write(b"".join(out))

    def _expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            # Replies would now come out of step with the waiters: start afresh.
            self._broken(TimeoutError(f"Redis did not answer within {self.timeout}s"))

    def _broken(self, exc: Exception) -> None:
        protocol = self._protocol
        self._protocol = None
        self._fail_all(exc)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._protocol = None
            self._fail_all(ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, deque()
        self._out = []
        for future in pending:
            if not future.done():
                future.set_exception(exc)

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self), self.host, self.port),
                    self.timeout,
                )
            except (OSError, builtins.TimeoutError) as exc:  # the name TimeoutError is redis's here
                raise ConnectionError(
                    f"cannot connect to Redis at {self.host}:{self.port}: {exc}"
                ) from None
            self._protocol = protocol
            if self.password:
                await self.command("AUTH", self.password)
            if self.db:
                await self.command("SELECT", self.db)
            self._connecting.set_result(protocol)
            return protocol
        except BaseException as exc:
            self._protocol = None
            self._connecting.set_exception(exc)
            self._connecting.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            self._connecting = None

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
        protocol, self._protocol = self._protocol, None
        self._fail_all(ConnectionError("client closed"))
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
