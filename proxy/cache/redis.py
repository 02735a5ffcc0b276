"""The Redis backend: entries shared by every worker and instance, with a per-project index.

Layout under REDIS_CACHE_KEY_PREFIX (``P``), with the project id as a hash tag so one project's keys
share a Redis Cluster slot (the scripts touch several of them):

    P{project}:<key>             an entry, or a Vary marker naming the headers that pick a variant
    P{project}:<key>:<variant>   an entry selected by Vary
    P{project}:idx               sorted set: member ``e<suffix> <path>`` (``m`` for a marker),
                                 score = expiry in ms; what purge reads, trimmed on every store
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from proxy.cache.backend import CacheUnavailable, Usage
from proxy.cache.entry import CacheEntry, decode, encode, encode_marker
from proxy.cache.headers import RawHeaders
from proxy.cache.policy import variant_id, vary_source

# One round trip per lookup, Vary included: a marker at the primary key is resolved inside Redis
# from the request's headers (ARGV[1], ``name\nvalue\n`` pairs), with the same SHA-1 as
# policy.variant_id.
_LOOKUP = """
local v = redis.call('GET', KEYS[1])
if (not v) or string.byte(v, 1) ~= 0 then return v end
local have = {}
for name, value in string.gmatch(ARGV[1], '([^\\n]*)\\n([^\\n]*)\\n') do
  if have[name] == nil then have[name] = value end
end
local parts = {}
for name in string.gmatch(string.sub(v, 2), '[^\\n]+') do
  parts[#parts + 1] = have[name] or ''
end
return redis.call('GET', KEYS[1] .. ':' .. redis.sha1hex(table.concat(parts, '\\n')))
"""

# The entry, its index member (and the Vary marker) in one atomic step, so every stored key is
# indexed and purge never misses one. The index lives as long as its longest entry.
_STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[7])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

_FAILURES = (RedisError, OSError, TimeoutError)
_PURGE_BATCH = 500


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisBackend:
    """After a failure the backend reports unavailable without trying Redis for
    ``retry_after`` seconds, so a dead or black-holed Redis costs one timeout per interval, not one
    per request."""

    name = "redis"
    scope = "all-instances"

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "llmproxy:cache:",
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the cache key prefix must not contain { or }")
        self.redis = redis
        self.prefix = prefix
        self.retry_after = retry_after
        self.clock = clock
        self._down_until = 0.0
        self._lookup_sha = hashlib.sha1(_LOOKUP.encode(), usedforsecurity=False).hexdigest()
        self._store_sha = hashlib.sha1(_STORE.encode(), usedforsecurity=False).hexdigest()

    async def _run(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script the first time a server has not seen it (redis-py's
        Script wrapper costs more per call than the command itself on a hit)."""
        try:
            return await self.redis.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.redis.script_load(script)
            return await self.redis.evalsha(sha, len(keys), *keys, *args)

    def _base(self, project_id: str) -> str:
        return f"{self.prefix}{{{project_id}}}:"

    def _check(self) -> None:
        if self._down_until and self.clock() < self._down_until:
            raise CacheUnavailable()

    def _failed(self, exc: BaseException) -> CacheUnavailable:
        self._down_until = self.clock() + self.retry_after
        return CacheUnavailable()

    async def get(self, project_id: str, key: str, headers: RawHeaders) -> CacheEntry | None:
        self._check()
        try:
            raw = await self._run(
                self._lookup_sha, _LOOKUP, [self._base(project_id) + key], [vary_source(headers)]
            )
        except _FAILURES as exc:
            raise self._failed(exc) from exc
        self._down_until = 0.0
        if not raw:
            return None
        try:
            return decode(raw)
        except ValueError:  # written by another version, or a marker without its variant
            return None

    async def put(
        self,
        project_id: str,
        key: str,
        path: str,
        entry: CacheEntry,
        vary: tuple[bytes, ...],
        headers: RawHeaders,
    ) -> None:
        self._check()
        base = self._base(project_id)
        now = self.clock()
        ttl_ms = int((entry.expires_at - now) * 1000)
        if ttl_ms <= 0:
            return
        suffix = f"{key}:{variant_id(vary, headers)}" if vary else key
        keys = [base + suffix, base + "idx"]
        args: list[bytes | str | int] = [
            encode(entry),
            ttl_ms,
            int(entry.expires_at * 1000),
            int(now * 1000),
            f"e{suffix} {path}",
        ]
        if vary:
            keys.append(base + key)
            args += [encode_marker(vary), f"m{key} {path}"]
        try:
            await self._run(self._store_sha, _STORE, keys, args)
        except _FAILURES as exc:
            raise self._failed(exc) from exc

    async def purge(self, project_id: str | None = None, path_prefix: str | None = None) -> int:
        try:
            if project_id is not None:
                return await self._purge_project(project_id, path_prefix)
            removed = 0
            pattern = _glob_escape(self.prefix) + "{*}:idx"
            async for raw in self.redis.scan_iter(match=pattern, count=1000):
                name = raw.decode() if isinstance(raw, bytes) else raw
                project = name[len(self.prefix) + 1 : -len("}:idx")]
                removed += await self._purge_project(project, path_prefix)
            return removed
        except _FAILURES as exc:
            raise CacheUnavailable() from exc

    async def _purge_project(self, project_id: str, path_prefix: str | None) -> int:
        base = self._base(project_id).encode()
        index = base + b"idx"
        wanted = path_prefix.encode("utf-8", "surrogateescape") if path_prefix else None
        batch: list[bytes] = []
        removed = 0
        async for member, _score in self.redis.zscan_iter(index, count=_PURGE_BATCH):
            path = member.partition(b" ")[2]
            if wanted is None or path.startswith(wanted):
                batch.append(member)
            if len(batch) >= _PURGE_BATCH:
                removed += await self._unlink(base, index, batch)
                batch = []
        if batch:
            removed += await self._unlink(base, index, batch)
        return removed

    async def _unlink(self, base: bytes, index: bytes, members: list[bytes]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.unlink(base + member[1:].partition(b" ")[0])
        pipe.zrem(index, *members)
        results = await pipe.execute()
        return sum(int(n) for m, n in zip(members, results, strict=False) if m[:1] == b"e")

    async def usage(self) -> Usage:
        """Entries across every project (an approximation: markers count too). Costs a SCAN."""
        now_ms = int(self.clock() * 1000)
        entries = 0
        try:
            pattern = _glob_escape(self.prefix) + "{*}:idx"
            async for raw in self.redis.scan_iter(match=pattern, count=1000):
                entries += int(await self.redis.zcount(raw, now_ms, "+inf"))
        except _FAILURES as exc:
            raise CacheUnavailable() from exc
        return Usage(entries=entries, bytes=None)

    async def aclose(self) -> None:
        """The Redis client belongs to whoever made it (the app's lifespan)."""
