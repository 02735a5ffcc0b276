"""Helpers for the limiter tests: a clock, tokens in a real store, a cuttable TCP proxy, and the
bodies of the worker processes that hammer one token."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

from proxy.limits import LimitConfig, LocalLimiter, RedisLimiter, make_limiter_redis
from proxy.limits.keys import KeyLayout
from shared.clock import new_id, utcnow
from shared.config import Settings
from shared.errors import QuotaExceeded
from shared.store import Project, SqlStore, Token, make_store

SECRET = b"limits-test-secret"
T0 = 1_700_000_000.0  # an epoch time: the Redis path takes the injected clock as epoch ms


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def make_token(store: SqlStore, **fields: Any) -> Token:
    now = utcnow()
    project = await store.create_project(
        Project(
            id=new_id(),
            name=f"p-{uuid.uuid4().hex[:8]}",
            base_url="http://127.0.0.1:9/v1",
            api_key_enc="unused",
            is_active=True,
            created_at=now,
            updated_at=now,
        )
    )
    return await store.create_token(
        Token(
            id=new_id(),
            token_hash=uuid.uuid4().hex,
            display_prefix="sk-llmp-test",
            project_id=project.id,
            label="",
            is_active=True,
            created_at=now,
            updated_at=now,
            **fields,
        )
    )


async def set_usage(store: SqlStore, token_id: str, requests: int, cache_hits: int) -> None:
    """Put event aggregates on a token, as the dispatcher would have."""
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE tokens SET request_count = %s, cache_hit_count = %s WHERE id = %s",
            (requests, cache_hits, token_id),
        )


class TcpProxy:
    """Forwards a local port to Redis; ``cut()`` drops every connection and refuses new ones,
    ``restore()`` listens again. Redis keeps its data throughout."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        await self.start()


# --- worker processes (spawned: module-level functions, plain arguments) ---------------------


def hammer(
    mode: str,
    env: dict[str, str],
    token_id: str,
    prefix: str,
    callers: int,
    barrier: Any,
    results: Any,
) -> None:
    """One worker process: its own store, Redis connection and limiter; ``callers`` concurrent
    tasks admit requests for one token until the quota says no. Puts the admitted count."""
    admitted = asyncio.run(_hammer(mode, env, token_id, prefix, callers, barrier))
    results.put(admitted)


async def _hammer(
    mode: str, env: dict[str, str], token_id: str, prefix: str, callers: int, barrier: Any
) -> int:
    settings = Settings.from_env(env)
    store = make_store(settings)
    await store.open()
    token = await store.get_token(token_id)
    assert token is not None
    config = LimitConfig()  # only the quota applies
    redis = None
    limiter: LocalLimiter | RedisLimiter
    if mode == "redis":
        config = LimitConfig(global_limit=1_000_000)  # so every admission goes through Redis too
        redis = make_limiter_redis(settings)
        limiter = RedisLimiter(config, store, redis, KeyLayout(prefix, SECRET))
    else:
        limiter = LocalLimiter(config, store)
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)  # start together

    async def caller() -> int:
        ok = 0
        for _ in range(200):
            try:
                admission = await limiter.admit(token, "127.0.0.1")
            except QuotaExceeded:
                return ok
            ok += 1
            await admission.release()
        return ok

    counts: Sequence[int] = await asyncio.gather(*(caller() for _ in range(callers)))
    await limiter.close()
    if redis is not None:
        await redis.aclose()
    await store.close()
    return sum(counts)


def hold_lease_and_die(env: dict[str, str], token_id: str, prefix: str, ready: Any) -> None:
    """A worker that takes a concurrency lease and dies without releasing it."""
    import os

    async def go() -> None:
        settings = Settings.from_env(env)
        store = make_store(settings)
        await store.open()
        token = await store.get_token(token_id)
        redis = make_limiter_redis(settings)
        limiter = RedisLimiter(
            LimitConfig(), store, redis, KeyLayout(prefix, SECRET), lease_ttl=3.0
        )
        await limiter.admit(token, "127.0.0.1")

    asyncio.run(go())
    ready.set()
    os._exit(0)  # no release, no cleanup: as if the worker were killed
