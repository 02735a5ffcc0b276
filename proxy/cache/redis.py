"""The Redis backend: entries shared by every worker and instance, with a per-project index.

Layout under REDIS_CACHE_KEY_PREFIX (``P``), with the project id as a hash tag so one project's keys
share a Redis Cluster slot (a store's MULTI block touches several of them):

    P{project}:<key>             an entry, or a Vary marker naming the headers that pick a variant
    P{project}:<key>:<variant>   an entry selected by Vary
    P{project}:idx               sorted set: member ``e<suffix> <path>`` (``m`` for a marker),
                                 score = expiry in ms; what purge reads, trimmed on every store
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from proxy.cache.backend import CacheUnavailable, Usage
from proxy.cache.entry import CacheEntry, decode, decode_marker, encode, encode_marker
from proxy.cache.headers import RawHeaders
from proxy.cache.policy import variant_id
from proxy.redis_client import FastRedis

# Bookkeeping for one store, run inside MULTI right after the entry's SET: the index member (and
# the Vary marker with its member), expired members trimmed, and the index kept alive as long as
# its longest-lived entry. The entry bytes never pass through Lua: Redis copies every string a
# script touches, which costs hundreds of microseconds of server time for a 256 KiB body.
_INDEX = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[6])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""
_INDEX_SHA = hashlib.sha1(_INDEX.encode(), usedforsecurity=False).hexdigest()
# How many Vary markers each worker remembers (so a Vary-keyed lookup is one GET, not two).
_VARY_MEMO = 10_000

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
        fast: FastRedis | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the cache key prefix must not contain { or }")
        if redis.get_connection_kwargs().get("decode_responses"):  # type: ignore[no-untyped-call]
            raise ValueError("the cache needs a Redis client that returns bytes")
        self.redis = redis
        # lookups, one per request, go through the lean client when there is one
        self.fast: FastRedis | aioredis.Redis = fast if fast is not None else redis
        self.prefix = prefix
        self.retry_after = retry_after
        self.clock = clock
        self._down_until = 0.0
        # Primary key -> the header names of the Vary marker stored there, as last seen.
        self._vary: OrderedDict[str, tuple[bytes, ...]] = OrderedDict()

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
        primary = self._base(project_id) + key
        names = self._vary.get(primary)
        try:
            target = f"{primary}:{variant_id(names, headers)}" if names else primary
            raw = await self.fast.get(target)
            if isinstance(raw, bytes) and (marker := decode_marker(raw)) is not None:
                # First sight of this Vary marker in this worker: one more GET, then remembered.
                self._remember(primary, marker)
                raw = await self.fast.get(f"{primary}:{variant_id(marker, headers)}")
        except _FAILURES as exc:
            raise self._failed(exc) from exc
        self._down_until = 0.0
        if not isinstance(raw, bytes):
            return None
        try:
            return decode(raw)
        except ValueError:  # written by another version
            return None

    def _remember(self, primary: str, names: tuple[bytes, ...] | None) -> None:
        if not names:
            self._vary.pop(primary, None)
            return
        self._vary[primary] = names
        if len(self._vary) > _VARY_MEMO:
            self._vary.popitem(last=False)

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
        keys = [base + "idx"]
        args: list[bytes | str | int] = [
            int(entry.expires_at * 1000),
            int(now * 1000),
            f"e{suffix} {path}",
            ttl_ms,
        ]
        if vary:
            keys.append(base + key)
            args += [encode_marker(vary), f"m{key} {path}"]
        blob = encode(entry)
        try:
            try:
                await self._store(base + suffix, blob, ttl_ms, keys, args)
            except NoScriptError:  # a new or restarted server: load the script, then again
                await self.redis.script_load(_INDEX)
                await self._store(base + suffix, blob, ttl_ms, keys, args)
        except _FAILURES as exc:
            raise self._failed(exc) from exc
        self._remember(base + key, vary)

    async def _store(
        self, name: str, blob: bytes, ttl_ms: int, keys: list[str], args: list[bytes | str | int]
    ) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(name, blob, px=ttl_ms)
        # by name, not pipe.evalsha(): a Cluster pipeline refuses the helper, not the command
        pipe.execute_command("EVALSHA", _INDEX_SHA, len(keys), *keys, *args)
        await pipe.execute()

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
            # by name: a Cluster pipeline's unlink() is a coroutine of its own, never queued
            pipe.execute_command("UNLINK", base + member[1:].partition(b" ")[0])
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
