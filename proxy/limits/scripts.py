"""The Lua scripts of the distributed limiter, run with EVALSHA (loaded again on NOSCRIPT)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324


#: Every check for one request, atomically: nothing is counted unless everything passes.
#:
#: KEYS: 1 global log, 2 IP log, 3 token log, 4 quota counter, 5 concurrency leases
#: ARGV: 1 now in ms (0: the server's clock), 2 a member id unique to this request,
#:       3/4 global limit/window ms, 5/6 IP limit/window ms, 7/8 token limit/window ms
#:       (limit 0: skip), 9 quota max (0: none), 10 "1" if the request counts against it,
#:       11 seed (-1: none yet), 12 admissions to add (made in the database while Redis was
#:       away), 13 quota key TTL ms, 14 concurrency cap (0: none), 15 lease TTL ms
#: Returns {status, kind, limit, remaining, ms, used}: status 1 admitted (kind/limit/remaining/
#: ms: the tightest window and when its oldest entry leaves), 0 refused (kind/limit, ms to wait),
#: 2 the quota counter is cold and needs a seed from the database (nothing was counted).
ADMIT = Script(
    """
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local used = 0
local qmax = tonumber(ARGV[9])
if qmax > 0 then
  local v = redis.call('GET', KEYS[4])
  if v then
    used = tonumber(v)
    local add = tonumber(ARGV[12])
    if add > 0 then used = redis.call('INCRBY', KEYS[4], add) end
  else
    used = tonumber(ARGV[11])
    if used < 0 then return {2, 0, 0, 0, 0, 0} end
    -- the seed already holds what the database counted while Redis was away: ARGV[12] is not added
    redis.call('SET', KEYS[4], used, 'PX', ARGV[13])
  end
  if used >= qmax then return {0, 4, qmax, 0, 0, used} end
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
local cap = tonumber(ARGV[14])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= cap and wait < 1000 then kind, limit, wait = 5, cap, 1000 end
end
if kind > 0 then return {0, kind, limit, 0, wait, used} end
for i = 1, 3 do
  if tonumber(ARGV[2 * i + 1]) > 0 then
    redis.call('ZADD', KEYS[i], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i + 2])
  end
end
if qmax > 0 then
  if ARGV[10] == '1' then used = redis.call('INCR', KEYS[4]) end
  redis.call('PEXPIRE', KEYS[4], ARGV[13])
end
if cap > 0 then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[15]), ARGV[2])
  redis.call('PEXPIRE', KEYS[5], ARGV[15])
end
local reset = 0
if tight > 0 then
  local entry = redis.call('ZRANGE', KEYS[tight], 0, 0, 'WITHSCORES')
  reset = tonumber(entry[2]) + tonumber(ARGV[2 * tight + 2]) - now
end
return {1, tight, tight_limit, tight_left, reset, used}
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
