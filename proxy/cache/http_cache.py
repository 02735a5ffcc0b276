"""The cache as the request pipeline uses it: plan, look up, fill (single flight), serve, purge.

The pipeline's sequence (``tests/cache_client.py`` runs exactly this)::

    plan = cache.prepare(project_id, method, path, query, raw_headers, body)   # no I/O
    served = await cache.lookup(plan)            # a hit (a 304 if the client's conditional matches)
    if served is not None:
        send(served.status, served.headers, served.body); event.cache_status = "hit"; return
    async with cache.fill(plan) as fill:
        if fill.served is not None:              # an identical request's upstream call answered it
            send(fill.served...); event.cache_status = fill.status; return
        upstream_headers = ... + fill.conditional_headers    # (replacing the client's conditionals)
        resp = await upstream(...)
        if resp.status == 304 and fill.revalidating:
            served = await fill.not_modified(resp.headers); send(served...); return
        send_start(resp.status, resp.headers + fill.start(resp.status, resp.headers))
        for chunk in resp.body: fill.feed(chunk); send(chunk)   # but the chunk that completes
        await fill.finish()     # the body is sent only after finish(): a repeat must find it
    event.cache_status = fill.status             # "miss" or "bypass"
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.cache.backend import CacheBackend, CacheStats, CacheUnavailable, Usage
from proxy.cache.entry import CacheEntry, Header
from proxy.cache.flight import Flight, Landing, SingleFlight
from proxy.cache.headers import RawHeaders, not_modified
from proxy.cache.policy import (
    BYPASS,
    EXPLICIT,
    LOOKUP,
    RequestView,
    StoreRules,
    cache_key,
    read_request,
    request_rules,
    response_rules,
    stored_headers,
    variant_id,
)

X_PROXY_CACHE = b"x-proxy-cache"
CACHE_STATUS = b"cache-status"
_HIT = (X_PROXY_CACHE, b"hit")
_MISS = (X_PROXY_CACHE, b"miss")
_BYPASS = (X_PROXY_CACHE, b"bypass")
_BYPASS_HEADERS = {
    "method": (_BYPASS, (CACHE_STATUS, b"llm-proxy; fwd=method")),
    "bypass": (_BYPASS, (CACHE_STATUS, b"llm-proxy; fwd=bypass")),
    "unavailable": (_BYPASS, (CACHE_STATUS, b"llm-proxy; fwd=bypass; detail=unavailable")),
}
_OPTED_IN = b"\nopt-in"  # one separator more than any key_part has: cannot collide
_COLLAPSED = (_HIT, (CACHE_STATUS, b"llm-proxy; fwd=miss; collapsed"))
# What a 304 to a client's conditional request carries (RFC 9110 15.4.5).
_NOT_MODIFIED_KEEP = frozenset(
    {b"cache-control", b"content-location", b"etag", b"expires", b"vary", b"last-modified"}
)


@functools.cache
def _miss_headers(fwd: str, detail: str, fwd_status: int = 0) -> tuple[Header, ...]:
    value = f"llm-proxy; fwd={fwd}"
    if fwd_status:
        value += f"; fwd-status={fwd_status}"
    value += f"; detail={detail}" if detail else "; stored"
    return (_MISS, (CACHE_STATUS, value.encode()))


@dataclass(slots=True)
class CachePlan:
    """One request's caching decision and key. The key never leaves the proxy."""

    project_id: str
    method: str
    path: str
    mode: str  # LOOKUP, REVALIDATE or BYPASS (a lookup may turn it into BYPASS)
    reason: str  # Cache-Status ``fwd`` (or the bypass reason)
    key: str
    headers: RawHeaders
    view: RequestView
    ttl: float | None  # the client's TTL (X-Proxy-Cache-TTL, POST opt-in)
    max_age: float | None  # the oldest stored answer the client accepts
    reuse: str  # policy.reuse_rule() of the request
    stale: CacheEntry | None = None  # a stored entry to revalidate upstream

    @property
    def cacheable(self) -> bool:
        return self.mode != BYPASS


@dataclass(slots=True)
class Served:
    """A response answered from the cache, ready to send."""

    status: int
    headers: list[Header]
    body: bytes
    stream: bool  # replay as text/event-stream (the body is the captured SSE bytes)
    waited_ms: float = 0.0  # a collapsed request: how long it waited on the identical one's call


class HttpCache:
    """The facade over one backend. Counters are in ``stats``; entries/bytes in ``usage()``."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        default_ttl: float = 300.0,
        max_object_bytes: int = 1 << 20,
        single_flight_wait: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.default_ttl = default_ttl
        self.max_object_bytes = max_object_bytes
        self.clock = clock
        self.stats = CacheStats(backend.name)
        self.flights = SingleFlight(single_flight_wait)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def scope(self) -> str:
        return self.backend.scope

    def prepare(
        self,
        project_id: str,
        method: str,
        path: str,
        query: bytes,
        headers: RawHeaders,
        body: bytes = b"",
    ) -> CachePlan:
        """Decide (no I/O): ``headers`` are the request's ASGI pairs (``request.headers.raw``),
        ``query`` its raw query string, ``body`` the request body (only read for POST)."""
        view = read_request(headers)
        rules = request_rules(method, path, view)
        key = ""
        if rules.mode != BYPASS:
            key_part = view.key_part
            if rules.reuse == EXPLICIT and rules.ttl is not None:
                # What one client opted in for is not served to readers who did not.
                key_part += _OPTED_IN
            key = cache_key(method, path, query, key_part, body if method == "POST" else None)
        return CachePlan(
            project_id,
            method,
            path,
            rules.mode,
            rules.reason,
            key,
            headers,
            view,
            rules.ttl,
            rules.max_age,
            rules.reuse,
        )

    async def lookup(self, plan: CachePlan) -> Served | None:
        """The cached answer, or None: go upstream through ``fill(plan)``. Never raises for the
        backend: an unavailable one turns the plan into a bypass."""
        if plan.mode == BYPASS:
            self.stats.bypasses += 1
            return None
        try:
            entry = await self.backend.get(plan.project_id, plan.key, plan.headers)
        except CacheUnavailable:
            self.stats.unavailable += 1
            self.stats.bypasses += 1
            plan.mode, plan.reason = BYPASS, "unavailable"
            return None
        if entry is None:
            return None
        now = self.clock()
        ttl_left = entry.expires_at - now
        if ttl_left <= 0:
            return None
        if plan.mode == LOOKUP and (plan.max_age is None or now - entry.stored_at <= plan.max_age):
            self.stats.hits += 1
            status = (CACHE_STATUS, b"llm-proxy; hit; ttl=%d" % ttl_left)
            return self._serve(plan, entry, now, (_HIT, status))
        if plan.mode == LOOKUP:
            plan.reason = "stale"  # older than the client's max-age
        if entry.has_validators:
            plan.stale = entry
        return None

    def fill(self, plan: CachePlan) -> Fill:
        return Fill(self, plan)

    def _serve(
        self, plan: CachePlan, entry: CacheEntry, now: float, tail: tuple[Header, ...]
    ) -> Served:
        view = plan.view
        conditional = view.if_none_match is not None or view.if_modified_since is not None
        if (
            conditional
            and plan.method != "POST"
            and not_modified(
                view.if_none_match, view.if_modified_since, entry.etag, entry.last_modified
            )
        ):
            headers = [h for h in entry.headers if h[0] in _NOT_MODIFIED_KEEP]
            status, body = 304, b""
        else:
            headers = list(entry.headers)
            status = entry.status
            body = b"" if plan.method == "HEAD" else entry.body
            if not entry.stream and plan.method != "HEAD" and status not in (204, 304):
                headers.append((b"content-length", b"%d" % len(body)))
        headers.extend(tail)
        headers.append((b"age", b"%d" % max(0, int(now - entry.stored_at))))
        return Served(status, headers, body, entry.stream)

    async def purge(self, project_id: str | None = None, path_prefix: str | None = None) -> int:
        """Remove entries; see CacheBackend.purge. Raises CacheUnavailable."""
        return await self.backend.purge(project_id, path_prefix)

    async def usage(self) -> Usage:
        return await self.backend.usage()

    async def aclose(self) -> None:
        await self.backend.aclose()


class Fill:
    """One request's trip upstream on the cache's behalf: joins or leads a single flight,
    captures the body as it passes and stores it once complete."""

    __slots__ = (
        "_chunks",
        "_flight",
        "_headers",
        "_rules",
        "_size",
        "_status",
        "cache",
        "conditional_headers",
        "plan",
        "served",
        "status",
    )

    def __init__(self, cache: HttpCache, plan: CachePlan) -> None:
        self.cache = cache
        self.plan = plan
        self.served: Served | None = None  # set when another request's call answered this one
        self.status = "bypass" if plan.mode == BYPASS else "miss"  # the event's cache_status
        # Add these to the upstream request (replacing the client's If-None-Match and
        # If-Modified-Since) when revalidating a stored entry.
        self.conditional_headers: tuple[Header, ...] = ()
        self._flight: Flight | None = None
        self._rules: StoreRules | None = None
        self._chunks: list[bytes] | None = None  # None: not capturing
        self._size = 0
        self._status = 0
        self._headers: tuple[Header, ...] = ()

    @property
    def revalidating(self) -> bool:
        """An upstream 304 answers our conditional: hand it to ``not_modified``."""
        return bool(self.conditional_headers)

    def _flight_key(self) -> tuple[str, str]:
        return (self.plan.project_id, self.plan.key)

    async def __aenter__(self) -> Fill:
        plan, cache = self.plan, self.cache
        if plan.mode == BYPASS:
            return self
        flights = cache.flights
        # A mutable GET nobody opted in is most likely not stored: waiting for an identical
        # one's headers would only add its latency to this one's.
        if flights.wait > 0 and not (plan.reuse == EXPLICIT and plan.ttl is None):
            self._flight = flights.lead(self._flight_key())
            current = flights.current(self._flight_key()) if self._flight is None else None
            # A revalidation wants its own upstream answer; it never waits on another's.
            if current is not None and plan.mode == LOOKUP:
                began = time.perf_counter()
                landing = await flights.follow(current)
                if landing is not None and (
                    not landing.vary or variant_id(landing.vary, plan.headers) == landing.variant
                ):
                    cache.stats.hits += 1
                    cache.stats.collapsed += 1
                    self.status = "hit"
                    self.served = cache._serve(plan, landing.entry, cache.clock(), _COLLAPSED)
                    self.served.waited_ms = (time.perf_counter() - began) * 1000
                    return self
        cache.stats.misses += 1
        stale = plan.stale
        if stale is not None:
            validators: list[Header] = []
            etag, modified = stale.header(b"etag"), stale.header(b"last-modified")
            if etag is not None:
                validators.append((b"if-none-match", etag))
            if modified is not None:
                validators.append((b"if-modified-since", modified))
            self.conditional_headers = tuple(validators)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Whatever happened (an error, a body never finished), followers stop waiting.
        self._chunks = None
        self._land(None)

    def _land(self, landing: Landing | None) -> None:
        if self._flight is not None:
            self.cache.flights.land(self._flight_key(), self._flight, landing)
            self._flight = None

    def start(self, status: int, headers: RawHeaders) -> tuple[Header, ...]:
        """The upstream answered: decide whether to store, and return the X-PROXY-CACHE and
        Cache-Status headers to send with it. ``headers`` are the upstream's response headers."""
        plan, cache = self.plan, self.cache
        if plan.mode == BYPASS:
            return _BYPASS_HEADERS[plan.reason]
        rules = response_rules(
            status,
            headers,
            now=cache.clock(),
            default_ttl=cache.default_ttl,
            client_ttl=plan.ttl,
            max_object_bytes=cache.max_object_bytes,
            reuse=plan.reuse,
        )
        if rules.ttl <= 0:
            cache.stats.not_stored += 1
            self._land(None)
            return _miss_headers(plan.reason, rules.reason)
        self._rules = rules
        self._status = status
        self._headers = stored_headers(headers)
        self._chunks = []
        self._size = 0
        return _miss_headers(plan.reason, "")

    def feed(self, chunk: bytes) -> None:
        """A piece of the body as it goes to the client (SSE bytes unchanged)."""
        chunks = self._chunks
        if chunks is None:
            return
        self._size += len(chunk)
        if self._size > self.cache.max_object_bytes:
            self._chunks = None
            self.cache.stats.not_stored += 1
            self._land(None)
            return
        chunks.append(chunk)

    async def finish(self) -> None:
        """The body is complete (never call this for a broken or cancelled one): store it."""
        chunks, rules = self._chunks, self._rules
        if chunks is None or rules is None:
            return
        self._chunks = None
        now = self.cache.clock()
        entry = CacheEntry(
            self._status, self._headers, b"".join(chunks), now, now + rules.ttl, rules.stream
        )
        await self._store(entry, rules)

    async def _store(self, entry: CacheEntry, rules: StoreRules) -> None:
        plan, cache = self.plan, self.cache
        vary = rules.vary
        self._land(Landing(entry, vary, variant_id(vary, plan.headers) if vary else ""))
        try:
            await cache.backend.put(plan.project_id, plan.key, plan.path, entry, vary, plan.headers)
        except CacheUnavailable:
            cache.stats.unavailable += 1
            return
        cache.stats.stores += 1

    async def not_modified(self, headers: RawHeaders) -> Served:
        """The upstream answered our revalidation with 304: refresh the stored entry with the
        304's headers (RFC 9111 4.3.4) and answer from it."""
        plan, cache = self.plan, self.cache
        stale = plan.stale
        if stale is None:
            raise RuntimeError("not_modified() without a revalidation (check fill.revalidating)")
        fresh = stored_headers(headers)
        names = {name for name, _ in fresh}
        merged = tuple(h for h in stale.headers if h[0] not in names) + fresh
        timing = tuple((n.lower(), v) for n, v in headers if n.lower() in (b"date", b"age"))
        rules = response_rules(
            stale.status,
            merged + timing,
            now=cache.clock(),
            default_ttl=cache.default_ttl,
            client_ttl=plan.ttl,
            max_object_bytes=cache.max_object_bytes,
            reuse=plan.reuse,
        )
        now = cache.clock()
        entry = CacheEntry(stale.status, merged, stale.body, now, now + rules.ttl, stale.stream)
        if rules.ttl > 0:
            await self._store(entry, rules)
            tail = _miss_headers(plan.reason, "", 304)
        else:
            cache.stats.not_stored += 1
            self._land(None)
            tail = _miss_headers(plan.reason, rules.reason, 304)
        return cache._serve(plan, entry, now, tail)
