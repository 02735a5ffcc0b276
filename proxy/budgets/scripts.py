"""The Lua scripts of budgets on Redis: reserve and settle, one call each per request, and the
seeding of a missing counter from the database.

A budget's counter is one hash: ``g`` its generation (set when it is seeded), ``p:<bucket>``
and ``t:<bucket>`` the picos and tokens used (spent plus reserved) in the bucket starting at
that epoch second, ``r`` / ``rt`` the picos and tokens held by open reservations. Amounts are
integers throughout: Redis's HINCRBY is exact on 64 bits, and where Lua must add picos (its
numbers are doubles, exact only up to 2^53, about $9,007) it splits each into billions and
a remainder, exact up to Redis's own 64-bit limit.
"""

from __future__ import annotations

from proxy.limits.scripts import Script

_SPLIT = """
local E = 1000000000
local function split(s)
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = #s
  local hi, lo = 0, tonumber(s)
  if n > 9 then
    hi = tonumber(string.sub(s, 1, n - 9))
    lo = tonumber(string.sub(s, n - 8))
  end
  if neg then return -hi, -lo end
  return hi, lo
end
"""

#: Check every budget of a request, then reserve the estimate in all of them, or in none.
#:
#: KEYS: the request's budget counters, one slot (proxy/budgets/keys.py)
#: ARGV: 1 estimate picos, 2 estimate tokens, then per key six: window start and bucket (epoch
#:       seconds), limit picos and limit tokens ('' when not set), hard (1/0), TTL ms
#: Returns {2, i...} if the counters i are missing (seed them and call again); else
#: {status, refused, then per key: used picos in billions, the rest, used tokens, over (1/0),
#: generation}: status 1 reserved, 0 refused by the hard budget at position ``refused``.
RESERVE = Script(
    _SPLIT
    + """
local missing = {2}
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], 'g') == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
local out = {1, 0}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 6
  local start = tonumber(ARGV[a + 1])
  local flat = redis.call('HGETALL', KEYS[i])
  local hi, lo, toks, gen = 0, 0, 0, ''
  for j = 1, #flat, 2 do
    local f = flat[j]
    local kind = string.sub(f, 1, 2)
    if kind == 'p:' or kind == 't:' then
      if tonumber(string.sub(f, 3)) < start then
        redis.call('HDEL', KEYS[i], f)
      elseif kind == 'p:' then
        local h, l = split(flat[j + 1])
        hi, lo = hi + h, lo + l
      else
        toks = toks + tonumber(flat[j + 1])
      end
    elseif f == 'g' then
      gen = flat[j + 1]
    end
  end
  local carry = math.floor(lo / E)
  hi, lo = hi + carry, lo - carry * E
  local over = 0
  if ARGV[a + 3] ~= '' then
    local lh, ll = split(ARGV[a + 3])
    if hi > lh or (hi == lh and lo >= ll) then over = 1 end
  end
  if ARGV[a + 4] ~= '' and toks >= tonumber(ARGV[a + 4]) then over = 1 end
  if over == 1 and ARGV[a + 5] == '1' and out[2] == 0 then out[1], out[2] = 0, i end
  for _, v in ipairs({hi, lo, toks, over, gen}) do out[#out + 1] = v end
end
if out[1] == 0 then return out end
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 6
  redis.call('HINCRBY', KEYS[i], 'p:' .. ARGV[a + 2], ARGV[1])
  redis.call('HINCRBY', KEYS[i], 't:' .. ARGV[a + 2], ARGV[2])
  redis.call('HINCRBY', KEYS[i], 'r', ARGV[1])
  redis.call('HINCRBY', KEYS[i], 'rt', ARGV[2])
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 6])
end
return out
"""
)

#: Replace a request's reservations with its cost. A counter seeded again since the
#: reservation (another generation) may or may not hold it (as the database had it when
#: seeding): the cost is added, the estimate left (on the safe side). A missing counter is
#: left alone: it is seeded from the database, which gets this cost too.
#:
#: KEYS: the counters reserved in
#: ARGV: 1/2 cost minus estimate (picos, tokens), 3/4 cost, 5/6 minus the estimate, then per
#:       key three: bucket (epoch seconds), generation reserved in, TTL ms
SETTLE = Script(
    """
for i = 1, #KEYS do
  local a = 6 + (i - 1) * 3
  local gen = redis.call('HGET', KEYS[i], 'g')
  if gen then
    local b = ARGV[a + 1]
    if gen == ARGV[a + 2] then
      redis.call('HINCRBY', KEYS[i], 'p:' .. b, ARGV[1])
      redis.call('HINCRBY', KEYS[i], 't:' .. b, ARGV[2])
      redis.call('HINCRBY', KEYS[i], 'r', ARGV[5])
      redis.call('HINCRBY', KEYS[i], 'rt', ARGV[6])
    else
      redis.call('HINCRBY', KEYS[i], 'p:' .. b, ARGV[3])
      redis.call('HINCRBY', KEYS[i], 't:' .. b, ARGV[4])
    end
    if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[a + 3]) then
      redis.call('PEXPIRE', KEYS[i], ARGV[a + 3])
    end
  end
end
return #KEYS
"""
)

#: Create a counter from the database's buckets, unless another worker just did.
#: KEYS: 1 the counter; ARGV: 1 generation, 2 TTL ms, then field, value pairs.
#: Returns 1 seeded, 0 already there.
SEED = Script(
    """
if redis.call('HEXISTS', KEYS[1], 'g') == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'g', ARGV[1], 'r', 0, 'rt', 0)
for j = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[j], ARGV[j + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)
