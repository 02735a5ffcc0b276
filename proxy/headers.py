"""Header shaping: what goes upstream, what comes back, request ids and CORS."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from proxy.upstream.providers import Provider

Headers = list[tuple[bytes, bytes]]

# Client headers forwarded upstream. Everything else (Authorization, cookies, hop-by-hop,
# X-Forwarded-*, Host, Content-Length, Accept-Encoding …) is dropped or set by us.
FORWARDED = frozenset(
    {
        b"content-type",
        b"accept",
        b"accept-language",
        b"user-agent",
        b"openai-beta",
        b"idempotency-key",
        b"x-idempotency-key",
        b"if-none-match",
        b"if-modified-since",
    }
)
ORG_HEADERS = frozenset({b"openai-organization", b"openai-project"})

#: Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, never pass a proxy.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Upstream response headers never passed to the client: hop-by-hop, cookies, and headers our
# server sets itself.
_DROPPED_RESPONSE = HOP_BY_HOP | frozenset(
    {
        b"set-cookie",
        b"set-cookie2",
        b"date",
        b"server",
        b"alt-svc",
    }
)

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_from(value: bytes | None) -> str:
    """The client's X-Request-ID if well-formed, else a fresh one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value.decode("ascii")
    return f"{random.getrandbits(128):032x}"  # unique, not secret: no system call needed


def upstream_headers(
    client: Iterable[tuple[bytes, bytes]],
    provider: Provider,
    api_key: str,
    request_id: str,
    *,
    forward_org: bool,
) -> dict[str, str]:
    """Allowlisted client headers (and the provider's own, such as ``anthropic-version``) plus
    the project's key where the provider wants it; identity encoding so the proxy can read
    usage and cache bodies without decompressing."""
    out: dict[str, str] = {}
    passes = provider.passes
    for name, value in client:
        if name in FORWARDED or (forward_org and name in ORG_HEADERS) or name in passes:
            out[name.decode("latin-1")] = value.decode("latin-1")
    for name_s, default in provider.defaults:
        out.setdefault(name_s, default)
    out[provider.key_header] = provider.key_prefix + api_key
    out["accept-encoding"] = "identity"
    out["x-request-id"] = request_id
    return out


def response_headers(upstream: Iterable[tuple[bytes, bytes]], *, keep_length: bool) -> Headers:
    """The upstream's response headers minus hop-by-hop ones, cookies and those named in its
    Connection header; Content-Length only when the body passes through unchanged. The
    upstream's X-Request-ID is kept as X-Upstream-Request-ID: the client gets one id, ours."""
    pairs = list(upstream)
    named: set[bytes] = set()
    for name, value in pairs:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    out: Headers = []
    for name, value in pairs:
        lname = name.lower()
        if lname in _DROPPED_RESPONSE or lname in named:
            continue
        if lname == b"content-length" and not keep_length:
            continue
        if lname == b"x-request-id":
            lname = b"x-upstream-request-id"
        out.append((lname, value))
    return out


def server_timing(proxy_ms: float, upstream_ms: float) -> bytes:
    return f"proxy;dur={proxy_ms:.2f}, upstream;dur={upstream_ms:.2f}".encode()


class Cors:
    """CORS for browser clients of ``/v1``; preflights are answered without auth."""

    EXPOSED = (
        b"x-request-id, x-upstream-request-id, server-timing, x-proxy-cache, cache-status, "
        b"retry-after, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset"
    )
    ALLOWED_HEADERS = (
        b"authorization, content-type, api-key, x-api-key, openai-beta, "
        b"openai-organization, openai-project, idempotency-key, x-request-id, cache-control, "
        b"x-proxy-cache-ttl, x-stainless-arch, x-stainless-lang, x-stainless-os, "
        b"x-stainless-package-version, x-stainless-runtime, x-stainless-runtime-version, "
        b"x-stainless-retry-count, x-stainless-timeout, anthropic-version, anthropic-beta, "
        b"anthropic-dangerous-direct-browser-access, x-affinity-key"
    )

    def __init__(self, origins: tuple[str, ...], methods: tuple[str, ...]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.encode() for o in origins)
        self.methods = ", ".join(methods).encode()

    def allowed(self, origin: bytes | None) -> bool:
        return origin is not None and (self.any or origin in self.origins)

    def headers(self, origin: bytes) -> Headers:
        return [
            (b"access-control-allow-origin", b"*" if self.any else origin),
            (b"access-control-expose-headers", self.EXPOSED),
            (b"vary", b"origin"),
        ]

    def preflight(self, origin: bytes) -> Headers:
        return [
            *self.headers(origin),
            (b"access-control-allow-methods", self.methods),
            (b"access-control-allow-headers", self.ALLOWED_HEADERS),
            (b"access-control-max-age", b"600"),
        ]
