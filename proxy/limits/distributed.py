"""Limits shared by every instance through Redis: one script call per request, with fallback."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import time
from typing import Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.limits.admission import (
    KINDS,
    NO_LIMITS,
    QUOTA,
    Admission,
    LimitConfig,
    LimitedToken,
    LimitStats,
    rejection,
)
from proxy.limits.keys import KeyLayout
from proxy.limits.local import Clock, LocalLimiter
from proxy.limits.scripts import ADMIT, RENEW, UNDO, Script
from proxy.limits.spread import merge, slot_groups, split_admit
from proxy.redis_client import FastRedis
from shared.errors import Unavailable
from shared.store import SqlStore

log = logging.getLogger("llm_proxy.limits")

#: Errors that mean "Redis cannot answer now" (as opposed to a bug in what we sent).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError, TimeoutError)


class RedisLimiter:
    """Global, per-IP and per-token windows and concurrency leases, all in one EVALSHA; the
    token quota in the database, whose conditional UPDATE is its one arbiter whether Redis is
    up or not (so a quota is exact through any Redis outage, restart or flush, on any number of
    workers and instances). When Redis cannot be reached: per-process windows and leases
    (``fallback=True``) or 503 ``Unavailable``."""

    def __init__(
        self,
        config: LimitConfig,
        store: SqlStore,
        redis: FastRedis,
        keys: KeyLayout,
        *,
        fallback: bool = True,
        clock: Clock | None = None,
        stats: LimitStats | None = None,
        lease_ttl: float = 30.0,
        renew_every: float = 10.0,
        retry_after_failure: float = 1.0,
    ) -> None:
        self.config = config
        self.store = store
        self.redis = redis
        self.keys = keys
        self.fallback = fallback
        self.stats = stats or LimitStats()
        # None: Redis's own clock, so instances with skewed clocks still agree. Tests inject one.
        self._clock = clock
        self.local = LocalLimiter(config, store, clock=clock or time.monotonic, stats=self.stats)
        self.lease_ttl = lease_ttl
        self.renew_every = renew_every
        self.retry_after_failure = retry_after_failure
        self._lease_ttl_ms = int(lease_ttl * 1000)
        self._member_prefix = secrets.token_hex(6) + ":"
        self._counter = itertools.count()
        self._down_until = 0.0  # monotonic time before which Redis is not tried again
        self._down = False
        self._leases: dict[str, str] = {}  # lease id -> its key, for renewal
        self._renewer: asyncio.Task[None] | None = None

    async def admit(
        self, token: LimitedToken | None, client_ip: str, *, cache_hit: bool = False
    ) -> Admission:
        cfg = self.config
        token_limit, token_window = cfg.token_window(token)
        ip = client_ip if cfg.ip_limit else ""
        quota = token is not None and token.max_requests is not None
        cap = (token.max_concurrency or 0) if token is not None else 0
        if not (cfg.global_limit or ip or token_limit or cap):
            if not quota:
                return NO_LIMITS
            # Only the quota applies: the database decides alone, Redis is not involved.
            return await self.local.admit(token, client_ip, cache_hit=cache_hit)
        if self._down_until:
            now = time.monotonic()
            if now < self._down_until:
                return await self._fall_back(token, client_ip, cache_hit)
            # This request probes Redis; the others keep falling back until it answers, so a
            # Redis that times out costs one slow request per interval, not all of them.
            self._down_until = now + self.retry_after_failure

        layout = self.keys
        if token is not None:
            t_key, _, c_key = layout.token_keys(token.id)
        else:  # unused keys still name the same slot
            t_key = c_key = layout.global_key
        keys = (layout.global_key, layout.ip_key(ip) if ip else t_key, t_key, c_key)
        member = f"{self._member_prefix}{next(self._counter)}"
        args: list[Any] = [
            int(self._clock() * 1000) if self._clock else 0,
            member,
            cfg.global_limit,
            60000,
            cfg.ip_limit if ip else 0,
            60000,
            token_limit,
            int(token_window * 1000),
            cap,
            self._lease_ttl_ms,
        ]
        try:
            reply = (
                await self._admit(keys, args)
                if layout.spread
                else await self._eval(ADMIT, keys, args)
            )
        except REDIS_DOWN as exc:
            self._went_down(exc)
            return await self._fall_back(token, client_ip, cache_hit)
        if self._down:
            self._down = False
            log.warning("Redis is reachable again: rate limits are shared across instances again")
        self._down_until = 0.0

        status, kind, limit, left, ms = (int(v) for v in reply)
        if status == 0:
            name = KINDS[kind - 1]
            self.stats.count_limited(name)
            window = token_window if kind == 3 else 60.0
            raise rejection(name, limit, ms / 1000, window)
        if quota:
            assert token is not None
            try:
                ok = await self.local.take_quota(token, cache_hit)
            except BaseException:
                await self._undo(keys, member)
                raise
            if not ok:
                await self._undo(keys, member)
                self.stats.count_limited(QUOTA)
                raise rejection(QUOTA, token.max_requests or 0, 0.0)
        release = None
        if cap:
            self._leases[member] = c_key
            release = functools.partial(self._release, c_key, member)
            if self._renewer is None:
                self._renewer = asyncio.create_task(self._renew_forever(), name="limit-leases")
        if not limit and release is None:
            return NO_LIMITS
        return Admission(limit, left, ms / 1000, release)

    async def _eval(self, script: Script, keys: tuple[str, ...], args: list[Any]) -> list[Any]:
        return cast(list[Any], await script.run(self.redis, keys, args))

    async def _admit(self, keys: tuple[str, ...], args: list[Any]) -> list[int]:
        """Redis Cluster: the edge and token parts in their own slots, sent together."""
        calls = split_admit(keys, args)
        replies = await asyncio.gather(
            *(self._eval(ADMIT, k, a) for k, a in calls), return_exceptions=True
        )
        failure = next((r for r in replies if isinstance(r, BaseException)), None)
        done = [i for i, r in enumerate(replies) if not isinstance(r, BaseException)]
        if failure is not None:  # take back what the part that answered counted, if anything
            await asyncio.gather(*(self._undo(calls[i][0], args[1]) for i in done))
            raise failure
        reply, undo = merge(cast(list[list[Any]], replies))
        await asyncio.gather(*(self._undo(calls[i][0], args[1]) for i in undo))
        return reply

    async def _undo(self, keys: tuple[str, ...], member: str) -> None:
        with contextlib.suppress(*REDIS_DOWN):  # if Redis is away, the entries age out
            if not self.keys.spread:
                await self._eval(UNDO, keys, [member])
                return
            groups = slot_groups(keys)
            await asyncio.gather(
                *(self._eval(UNDO, tuple(keys[i] for i in g), [member]) for g in groups.values())
            )

    def _went_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_after_failure
        if not self._down:
            self._down = True
            mode = "per-process limits" if self.fallback else "refusing requests (503)"
            log.warning("Redis unreachable for rate limits (%s): %s", type(exc).__name__, mode)

    async def _fall_back(
        self, token: LimitedToken | None, client_ip: str, cache_hit: bool
    ) -> Admission:
        if not self.fallback:
            self.stats.unavailable += 1
            raise Unavailable(
                "Rate limiting is unavailable; retry shortly.", headers={"Retry-After": "1"}
            )
        self.stats.count_fallback()
        return await self.local.admit(token, client_ip, cache_hit=cache_hit)

    async def _release(self, key: str, member: str) -> None:
        self._leases.pop(member, None)
        with contextlib.suppress(*REDIS_DOWN):  # if Redis is away, the lease lapses by itself
            await self.redis.zrem(key, member)

    async def renew_leases(self) -> None:
        """Push back the expiry of every lease this process holds (one call for all)."""
        if not self._leases:
            return
        members = list(self._leases)
        keys = tuple(self._leases[m] for m in members)
        now = int(self._clock() * 1000) if self._clock else 0
        if not self.keys.spread:
            await self._eval(RENEW, keys, [now, self._lease_ttl_ms, *members])
            return
        for group in slot_groups(keys).values():  # one call per token's slot on a Cluster
            await self._eval(
                RENEW,
                tuple(keys[i] for i in group),
                [now, self._lease_ttl_ms, *(members[i] for i in group)],
            )

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                await self.renew_leases()
            except REDIS_DOWN as exc:
                log.debug("renewing leases failed: %s", type(exc).__name__)

    async def close(self) -> None:
        task, self._renewer = self._renewer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
