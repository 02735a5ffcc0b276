"""The Lua scripts of the distributed limiter, run with EVALSHA (loaded again on NOSCRIPT)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from proxy.redis_client import FastRedis


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324

    async def run(self, redis: FastRedis, keys: tuple[str, ...], args: list[Any]) -> Any:
        """EVALSHA, loading the script first if Redis forgot it (a restart or flush)."""
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


#: Every window and lease check for one request, atomically: nothing is counted unless
#: everything passes. The token quota is not here: the database counts it (see RedisLimiter).
#:
#: KEYS: 1 global log, 2 IP log, 3 token log, 4 concurrency leases
#: ARGV: 1 now in ms (0: the server's clock), 2 a member id unique to this request,
#:       3/4 global limit/window ms, 5/6 IP limit/window ms, 7/8 token limit/window ms
#:       (limit 0: skip), 9 concurrency cap (0: none), 10 lease TTL ms
#: Returns {status, kind, limit, remaining, ms}: status 1 admitted (kind/limit/remaining/ms:
#: the tightest window and when its oldest entry leaves), 0 refused (kind/limit, ms to wait).
ADMIT = Script(
    """
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local kind, limit, wait = 0, 0, -1
local tight, tight_limit, tight_left = 0, 0, 0
for i = 1, 3 do
  local lim = tonumber(ARGV[2 * i + 1])
  if lim > 0 then
    local win = tonumber(ARGV[2 * i + 2])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - win)
    local n = redis.call('ZCARD', KEYS[i])
    if n >= lim then
      local entry = redis.call('ZRANGE', KEYS[i], n - lim, n - lim, 'WITHSCORES')
      local w = tonumber(entry[2]) + win - now
      if w > wait then kind, limit, wait = i, lim, w end
    elseif tight == 0 or lim - n - 1 < tight_left then
      tight, tight_limit, tight_left = i, lim, lim - n - 1
    end
  end
end
local cap = tonumber(ARGV[9])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= cap and wait < 1000 then kind, limit, wait = 5, cap, 1000 end
end
if kind > 0 then return {0, kind, limit, 0, wait} end
for i = 1, 3 do
  if tonumber(ARGV[2 * i + 1]) > 0 then
    redis.call('ZADD', KEYS[i], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i + 2])
  end
end
if cap > 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[10]), ARGV[2])
  redis.call('PEXPIRE', KEYS[4], ARGV[10])
end
local reset = 0
if tight > 0 then
  local entry = redis.call('ZRANGE', KEYS[tight], 0, 0, 'WITHSCORES')
  reset = tonumber(entry[2]) + tonumber(ARGV[2 * tight + 2]) - now
end
return {1, tight, tight_limit, tight_left, reset}
"""
)

#: Take back what ADMIT counted for a request the quota then refused, so a refusal costs no
#: window slot or lease. KEYS: the same four; ARGV: 1 the request's member id.
UNDO = Script(
    """
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return #KEYS
"""
)

#: Extend this process's live leases, so a long stream keeps its slot while a dead worker's
#: leases lapse. KEYS: lease sets; ARGV: 1 now ms (0: server clock), 2 lease TTL ms, then the
#: lease id for each key. XX: a lease that already lapsed is not brought back.
RENEW = Script(
    """
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + ttl, ARGV[i + 2]) > 0 then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return #KEYS
"""
)
