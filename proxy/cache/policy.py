"""What may be cached, for how long, and under which key: pure decisions over raw ASGI headers.

Headers arrive as ASGI pairs (lower-case ``bytes`` names, ``bytes`` values), the form the request
already has, so deciding costs one pass and no per-header decoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from proxy.cache.headers import (
    RawHeaders,
    delta_seconds,
    parse_cache_control,
    parse_http_date,
    parse_ttl,
    parse_vary,
)
from proxy.headers import HOP_BY_HOP

LOOKUP, REVALIDATE, BYPASS = "lookup", "revalidate", "bypass"

# How a request's answer may be reused, before either side says anything (docs/caching.md's table).
DEFAULT = "default"  # stored for HTTP_CACHE_DEFAULT_TTL unless the upstream forbids it
EXPLICIT = "explicit"  # stored only when the upstream marks it cacheable or the client opts in
OPT_IN = "opt-in"  # stored only when the client opts in
NEVER = "never"

# Answers that stay the same for every reader of a project until its operator changes the
# deployment. Every other GET (files, batches, responses/{id}, fine-tuning jobs, vector stores,
# uploads, assistants, threads, whatever the allowlist adds) can change between two reads.
_REUSABLE = ("/v1/models",)

# Request headers that change the upstream's answer, so they are part of every key (docs/caching.md
# lists them for operators). Authorization is not: the proxy replaces it with the project's key,
# and the project is part of every key.
KEY_HEADERS = (
    b"accept",
    b"accept-encoding",
    b"content-type",
    b"openai-organization",
    b"openai-project",
    b"openai-beta",
    b"anthropic-version",
    b"anthropic-beta",
)
_KEY_SLOTS = {name: i for i, name in enumerate(KEY_HEADERS)}

# Request headers the upstream never sees as the client sent them (the proxy drops or replaces
# them): a Vary on these cannot split answers within a project.
NOT_FORWARDED = HOP_BY_HOP | {b"authorization", b"cookie", b"host", b"content-length"}
_NOT_VARIANT = NOT_FORWARDED | frozenset(KEY_HEADERS)  # never worth a Vary variant

# Response headers never replayed from the cache: hop-by-hop ones, framing the server redoes,
# and ones that describe one particular response (its id, timing, the upstream's rate-limit state,
# cookies meant for one client).
NOT_STORED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"date",
        b"server",
        b"age",
        b"alt-svc",
        b"set-cookie",
        b"set-cookie2",
        b"x-request-id",
        b"x-proxy-cache",
        b"cache-status",
        b"openai-processing-ms",
        b"x-envoy-upstream-service-time",
        b"cf-ray",
        b"via",
    }
)
_NOT_STORED_PREFIXES = (b"x-ratelimit-",)

# Statuses stored when the upstream says nothing, and those stored only with explicit freshness
# (RFC 9111 4.2.2 lets a cache guess for the latter; we do not, so a plain 404 is never cached).
STORABLE = frozenset({200})
STORABLE_IF_EXPLICIT = frozenset({203, 204, 300, 301, 308, 404, 405, 410, 414, 501})


@dataclass(slots=True)
class RequestView:
    """The caching-relevant parts of a request's headers, read in one pass."""

    cache_control: str | None = None
    pragma: str | None = None
    ttl: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    key_part: bytes = b""


# One dict lookup per request header decides whether it matters: key headers by their slot in
# KEY_HEADERS, the directives by a negative code.
_CC, _PRAGMA, _TTL, _INM, _IMS = -1, -2, -3, -4, -5
_READ = {
    **_KEY_SLOTS,
    b"cache-control": _CC,
    b"pragma": _PRAGMA,
    b"x-proxy-cache-ttl": _TTL,
    b"if-none-match": _INM,
    b"if-modified-since": _IMS,
}


def read_request(headers: RawHeaders) -> RequestView:
    view = RequestView()
    values: list[bytes | None] = [None] * len(KEY_HEADERS)
    for name, value in headers:
        slot = _READ.get(name)
        if slot is None:
            continue
        if slot >= 0:
            prior = values[slot]
            values[slot] = value if prior is None else prior + b", " + value
        elif slot == _CC:
            text = value.decode("latin-1")
            prior_cc = view.cache_control
            view.cache_control = text if prior_cc is None else f"{prior_cc}, {text}"
        elif slot == _PRAGMA:
            view.pragma = value.decode("latin-1")
        elif slot == _TTL:
            view.ttl = value.decode("latin-1")
        elif slot == _INM:
            view.if_none_match = value.decode("latin-1")
        else:
            view.if_modified_since = value.decode("latin-1")
    view.key_part = b"\n".join([v or b"" for v in values])
    return view


def reuse_rule(method: str, path: str) -> str:
    """The one rule for what may be stored without anyone asking: DEFAULT, EXPLICIT, OPT_IN or
    NEVER for ``method`` on ``path`` (the request path, ``/v1/...``)."""
    if method == "GET" or method == "HEAD":
        for prefix in _REUSABLE:
            if path == prefix or path.startswith(prefix + "/"):
                return DEFAULT
        return EXPLICIT
    if method == "POST":
        return OPT_IN
    return NEVER


@dataclass(slots=True, frozen=True)
class RequestRules:
    mode: str  # LOOKUP, REVALIDATE or BYPASS
    reason: str  # why: Cache-Status ``fwd`` for REVALIDATE/BYPASS ("request", "method", "bypass")
    ttl: float | None = None  # the TTL the client asked for (X-Proxy-Cache-TTL, POST opt-in)
    max_age: float | None = None  # the oldest stored answer the client accepts
    reuse: str = NEVER  # reuse_rule() of the request


def request_rules(method: str, path: str, view: RequestView) -> RequestRules:
    """Whether to look up, revalidate or bypass, from the method, the path and the client's
    directives."""
    reuse = reuse_rule(method, path)
    if reuse == NEVER:
        return RequestRules(BYPASS, "method")
    cc = parse_cache_control(view.cache_control) if view.cache_control else {}
    if "no-store" in cc:
        return RequestRules(BYPASS, "bypass", reuse=reuse)
    ttl = parse_ttl(view.ttl)
    max_age: float | None = delta_seconds(cc.get("max-age")) if "max-age" in cc else None
    if reuse == OPT_IN:
        # POST answers are cached only on the client's explicit request, with its TTL.
        if ttl is None:
            shared = delta_seconds(cc.get("s-maxage")) if "s-maxage" in cc else None
            if shared is not None:
                ttl = shared
            elif "public" in cc and max_age is not None:
                ttl = max_age
        if not ttl:
            return RequestRules(BYPASS, "method", reuse=reuse)
    if ttl is not None:
        max_age = ttl if max_age is None else min(max_age, ttl)
    # Pragma: no-cache counts only without Cache-Control (RFC 9111 5.4).
    pragma = view.pragma is not None and not cc and "no-cache" in view.pragma
    no_cache = "no-cache" in cc or pragma
    if no_cache or max_age == 0:
        return RequestRules(REVALIDATE, "request", ttl, max_age, reuse)
    return RequestRules(LOOKUP, "miss", ttl, max_age, reuse)


@dataclass(slots=True, frozen=True)
class StoreRules:
    ttl: float  # > 0: store for this long; 0: do not store (see ``reason``)
    reason: str  # Cache-Status ``detail`` when not stored
    vary: tuple[bytes, ...] = ()  # request headers outside the key that select the variant
    stream: bool = False
    explicit: bool = False  # the upstream gave a freshness lifetime


def _no(reason: str) -> StoreRules:
    return StoreRules(0.0, reason)


def response_rules(
    status: int,
    headers: RawHeaders,
    *,
    now: float,
    default_ttl: float,
    client_ttl: float | None,
    max_object_bytes: int,
    reuse: str,
) -> StoreRules:
    """Whether (and how long) to store a response, from its status and headers (RFC 9111 3, 4.2)
    and the request's ``reuse_rule()``: without a lifetime from the upstream or the client, only a
    DEFAULT request (or a ``public`` answer) gets ``default_ttl``."""
    cc_parts: list[str] = []
    vary: list[str] = []
    expires = date = age = length = None
    stream = False
    for name, value in headers:
        name = name.lower()
        if name == b"cache-control":
            cc_parts.append(value.decode("latin-1"))
        elif name == b"expires":
            expires = value.decode("latin-1")
        elif name == b"date":
            date = value.decode("latin-1")
        elif name == b"age":
            age = value.decode("latin-1")
        elif name == b"vary":
            vary.append(value.decode("latin-1"))
        elif name == b"content-length":
            length = value
        elif name == b"content-type":
            stream = value.lower().startswith(b"text/event-stream")
    cc = parse_cache_control(",".join(cc_parts)) if cc_parts else {}
    if "no-store" in cc:
        return _no("no-store")
    if "private" in cc:
        return _no("private")
    # no-cache means "revalidate before every reuse"; an LLM API cannot revalidate a POST, and SSE
    # servers and gateways send it by habit, so a client's explicit TTL is what decides there.
    if "no-cache" in cc and client_ttl is None:
        return _no("no-cache")

    freshness: float | None = None
    if "s-maxage" in cc:
        freshness = delta_seconds(cc["s-maxage"])
    if freshness is None and "max-age" in cc:
        freshness = delta_seconds(cc["max-age"])
    if freshness is None and expires is not None:
        until = parse_http_date(expires)
        origin_now = parse_http_date(date) if date else None
        # An invalid Expires means "already expired" (RFC 9111 5.3).
        freshness = 0.0 if until is None else until - (origin_now or now)
    explicit = freshness is not None
    if status not in STORABLE and not (explicit and status in STORABLE_IF_EXPLICIT):
        return _no("status")
    if freshness is not None:
        freshness -= delta_seconds(age) or 0
    if freshness is None:
        if client_ttl is not None:
            ttl = client_ttl
        elif reuse == DEFAULT or "public" in cc:
            ttl = default_ttl
        else:
            return _no("mutable")
    else:
        ttl = freshness if client_ttl is None else min(freshness, client_ttl)
    if ttl <= 0:
        return _no("expired")
    if length is not None and length.isdigit() and int(length) > max_object_bytes:
        return _no("too-large")
    names = parse_vary(vary)
    if names is None:
        return _no("vary")
    extra = tuple(n.encode("latin-1") for n in names if n.encode("latin-1") not in _NOT_VARIANT)
    return StoreRules(float(ttl), "", extra, stream, explicit)


def stored_headers(headers: RawHeaders) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers a hit replays: lower-case names, minus NOT_STORED and anything the
    Connection header names."""
    extra_hop: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            extra_hop.update(p.strip().lower() for p in value.split(b","))
    out = []
    for name, value in headers:
        name = name.lower()
        if name in NOT_STORED or name in extra_hop or name.startswith(_NOT_STORED_PREFIXES):
            continue
        if b"\n" in value or b"\r" in value or b"\n" in name:
            continue
        out.append((name, value))
    return tuple(out)


def cache_key(method: str, path: str, query: bytes, key_part: bytes, body: bytes | None) -> str:
    """The primary key (hex, 128 bits of SHA-256) of a request within its project."""
    raw_path = path.encode("utf-8", "surrogateescape")
    parts = sorted(p for p in query.split(b"&") if p) if query else ()
    h = hashlib.sha256(
        b"%s\n%d:%s\n%s\n%s\n"
        % (method.encode("ascii"), len(raw_path), raw_path, b"&".join(parts), key_part)
    )
    if body is not None:
        h.update(body)
    return h.hexdigest()[:32]


def first_value(headers: RawHeaders, name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def variant_id(names: tuple[bytes, ...], headers: RawHeaders) -> str:
    """Which variant of a Vary-keyed response a request selects (missing and empty are alike)."""
    material = b"\n".join(first_value(headers, n) for n in names)
    return hashlib.sha1(material, usedforsecurity=False).hexdigest()
