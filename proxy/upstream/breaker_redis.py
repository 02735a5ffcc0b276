"""Circuit breakers kept in Redis, so every worker and instance sees one state per upstream.

Each upstream has a hash (``open_until``, ``probe_at``) and a sorted set of recent failures,
both under one hash tag (one Cluster slot); each operation is one script, so two workers can
never both claim a half-open probe. While Redis cannot be reached, breakers fail open: every
upstream is allowed and nothing is recorded (a breaker steers traffic, it must never stop it)."""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from proxy.limits.distributed import REDIS_DOWN
from proxy.limits.scripts import Script
from proxy.upstream.breaker import CLOSED, HALF_OPEN, OPEN, PROBE_TIMEOUT, BreakerPolicy

log = logging.getLogger("llm_proxy.upstream")

# KEYS: 1 hash, ARGV: 1 now, 2 probe timeout. 1: allowed (a half-open probe is claimed).
_ALLOW = Script(
    """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return 1 end
local now = tonumber(ARGV[1])
if now < open_until then return 0 end
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0')
if probe > 0 and now - probe < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'probe_at', ARGV[1])
return 1
"""
)
# KEYS: 1 hash, 2 failures; ARGV: 1 now, 2 window, 3 failures to open, 4 cooldown,
# 5 Retry-After (-1: none), 6 a unique member, 7 key TTL ms. 1: the breaker is open now.
_FAILURE = Script(
    """
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local count = redis.call('ZCARD', KEYS[2])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local retry = tonumber(ARGV[5])
local tripped = open_until > 0 or count >= tonumber(ARGV[3])
if not tripped and retry < 0 then return 0 end
local cool = 0
if tripped then cool = tonumber(ARGV[4]) end
if retry > cool then cool = retry end
redis.call('HSET', KEYS[1], 'open_until', string.format('%.6f', now + cool), 'probe_at', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
"""
)
# KEYS: 1 hash, 2 failures. A success of an open (probing) breaker closes it.
_SUCCESS = Script(
    """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""
)


class RedisBreakers:
    def __init__(self, client: aioredis.Redis, policy: BreakerPolicy, *, prefix: str) -> None:
        self.client = client
        self.policy = policy
        self.prefix = prefix
        # keys outlive what they describe by a margin, then go on their own
        longest = max(policy.window, policy.cooldown, PROBE_TIMEOUT)
        self.ttl_ms = int((longest + 3600) * 1000)
        self._down = False

    def _keys(self, upstream_id: str) -> tuple[str, str]:
        base = f"{self.prefix}{{{upstream_id}}}"
        return base, base + ":f"

    async def _eval(self, script: Script, keys: tuple[str, ...], *args: Any) -> Any:
        try:
            reply = await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis forgot the script
            await self.client.script_load(script.source)
            reply = await self.client.evalsha(script.sha, len(keys), *keys, *args)
        if self._down:
            self._down = False
            log.info("upstream breakers: Redis reachable again")
        return reply

    def _unreachable(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning("upstream breakers: Redis unreachable (%s); failing open", exc)

    async def allow(self, upstream_id: str, now: float) -> bool:
        try:
            reply = await self._eval(_ALLOW, self._keys(upstream_id)[:1], now, PROBE_TIMEOUT)
        except REDIS_DOWN as exc:
            self._unreachable(exc)
            return True
        return bool(int(reply))

    async def failure(self, upstream_id: str, now: float, retry_after: float | None) -> str:
        p = self.policy
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        args = (now, p.window, p.failures, p.cooldown, -1 if retry_after is None else retry_after)
        try:
            reply = await self._eval(_FAILURE, self._keys(upstream_id), *args, member, self.ttl_ms)
        except REDIS_DOWN as exc:
            self._unreachable(exc)
            return CLOSED
        return OPEN if int(reply) else CLOSED

    async def success(self, upstream_id: str, now: float) -> None:
        try:
            await self._eval(_SUCCESS, self._keys(upstream_id))
        except REDIS_DOWN as exc:
            self._unreachable(exc)

    async def state(self, upstream_id: str, now: float) -> str:
        value = None
        with contextlib.suppress(*REDIS_DOWN):
            value = await self.client.hget(self._keys(upstream_id)[0], "open_until")
        open_until = float(value) if value else 0.0
        if not open_until:
            return CLOSED
        return OPEN if now < open_until else HALF_OPEN

    async def purge(self) -> None:
        """Delete every breaker key under the prefix (tests, and an operator's reset)."""
        async for key in self.client.scan_iter(match=self.prefix + "*"):
            await self.client.delete(key)
