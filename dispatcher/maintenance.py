"""Stream upkeep: trimming below what every group acknowledged, dead consumers, stream stats,
and scheduling the retention job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dispatcher.metrics import DispatcherMetrics
from dispatcher.options import Options
from dispatcher.sinks import Jobs
from shared.streams import StreamKeys, StreamStats, stream_stats

log = logging.getLogger("llm_proxy.dispatcher")

_FORGET_EVERY = 600.0
_RETENTION_EVERY = 3600.0

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
        return await stream_stats(self.redis, self.stream_key)


class Upkeep:
    """What every dispatcher does besides writing, every ``trim_interval``: trim, refresh the
    stream gauges, now and then forget dead consumers and (one dispatcher per hour, by a Redis
    lock) enqueue the retention job."""

    def __init__(
        self,
        redis: aioredis.Redis,
        options: Options,
        metrics: DispatcherMetrics,
        *,
        retention_jobs: Jobs | None = None,
    ) -> None:
        self.redis = redis
        self.options = options
        self.metrics = metrics
        self.retention_jobs = retention_jobs
        self.keeper = StreamKeeper(redis, options.stream_key)
        self.keys = StreamKeys(options.stream_key)

    async def run(self, stopping: asyncio.Event) -> None:
        next_forget = time.monotonic() + _FORGET_EVERY
        next_retention = time.monotonic()
        while not stopping.is_set():
            try:
                self.metrics.trimmed.inc(await self.keeper.trim())
                await self.refresh_stats()
                now = time.monotonic()
                if now >= next_forget:
                    next_forget = now + _FORGET_EVERY
                    await self.keeper.forget_consumers(
                        self.options.group,
                        idle_seconds=max(86400.0, 100 * self.options.claim_idle),
                        keep=self.options.consumer,
                    )
                if self.retention_jobs is not None and now >= next_retention:
                    next_retention = now + _RETENTION_EVERY
                    await self._schedule_retention(self.retention_jobs)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("stream upkeep skipped: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.options.trim_interval)

    async def _schedule_retention(self, jobs: Jobs) -> None:
        lock = self.keys.retention_lock
        if await self.redis.set(
            lock, self.options.consumer, nx=True, ex=int(_RETENTION_EVERY) - 60
        ):
            await asyncio.to_thread(jobs.prune_events.send)

    async def refresh_stats(self) -> None:
        stats = await self.keeper.stats()
        m = self.metrics
        shard = str(self.options.shard)
        m.stream_length.labels(shard).set(stats.length)
        for g in stats.groups:
            m.stream_lag.labels(g.name, shard).set(-1 if g.lag is None else g.lag)
            m.stream_pending.labels(g.name, shard).set(g.pending)
            m.stream_consumers.labels(g.name, shard).set(g.consumers)
