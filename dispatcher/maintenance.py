"""Stream upkeep: trimming below what every group acknowledged, dead consumers, stream stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

# Atomic, so no group can move between the reading and the trimming. The floor is the oldest
# entry any group still needs: its oldest pending entry, or (nothing pending) its last delivered
# one; entries after that have not been delivered yet. No group at all: keep everything.
_TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local floor, floor_ms, floor_seq = nil, 0, 0
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local need = info['last-delivered-id']
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  if pending[1] > 0 then need = pending[2] end
  local ms, seq = string.match(need, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  if floor == nil or ms < floor_ms or (ms == floor_ms and seq < floor_seq) then
    floor, floor_ms, floor_seq = need, ms, seq
  end
end
if floor == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
"""

# Consumers left behind by dispatchers that are gone (a new pid is a new consumer). Only ones
# with nothing pending and idle for long are removed, atomically with the check.
_FORGET_CONSUMERS = """
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class GroupStats:
    name: str
    consumers: int
    pending: int
    lag: int | None  # None when Redis cannot compute it (entries deleted mid-stream)
    last_delivered_id: str


@dataclass(frozen=True, slots=True)
class StreamStats:
    length: int
    groups: list[GroupStats]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamKeeper:
    def __init__(self, redis: aioredis.Redis, stream_key: str) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self._trim = redis.register_script(_TRIM)
        self._forget = redis.register_script(_FORGET_CONSUMERS)

    async def trim(self) -> int:
        """Delete entries every group has acknowledged; return how many went."""
        return int(await self._trim(keys=[self.stream_key]))

    async def forget_consumers(self, group: str, *, idle_seconds: float, keep: str) -> int:
        return int(
            await self._forget(keys=[self.stream_key], args=[group, int(idle_seconds * 1000), keep])
        )

    async def stats(self) -> StreamStats:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.stream_key)
        pipe.xinfo_groups(self.stream_key)
        try:
            length, groups = await pipe.execute()
        except aioredis.ResponseError:  # no stream yet
            return StreamStats(0, [])
        out = []
        for g in groups:
            info = {_text(k): v for k, v in g.items()}
            lag = info.get("lag")
            out.append(
                GroupStats(
                    name=_text(info["name"]),
                    consumers=int(info["consumers"]),
                    pending=int(info["pending"]),
                    lag=None if lag is None else int(lag),
                    last_delivered_id=_text(info["last-delivered-id"]),
                )
            )
        return StreamStats(int(length), out)
