"""What every limiter shares: the limits in force, the admission it returns, its counters."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from shared.config import Settings
from shared.errors import QuotaExceeded, RateLimited
from shared.store import Token

MINUTE = 60.0

#: Limit kinds, as counted in ``rate_limited_total{kind=...}``. Their 1-based positions are the
#: codes the Redis script returns.
KINDS = ("global", "ip", "token", "quota", "concurrency")
GLOBAL, IP, TOKEN, QUOTA, CONCURRENCY = KINDS

#: How long a client refused for concurrency is told to wait: a slot frees when any request of
#: the token ends, which we cannot predict.
CONCURRENCY_RETRY = 1.0


class LimitedToken(Protocol):
    """The token fields the limiter reads. ``shared.store.Token`` has them; so does
    ``TokenLimits``, which a pipeline keeps in its auth cache next to the credential."""

    @property
    def id(self) -> str: ...

    @property
    def rpm(self) -> int | None: ...

    @property
    def max_requests(self) -> int | None: ...

    @property
    def max_concurrency(self) -> int | None: ...

    @property
    def updated_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """A token's limits, built once per auth-cache entry (``TokenLimits.of(row)``)."""

    id: str
    rpm: int | None
    max_requests: int | None
    max_concurrency: int | None
    updated_at: datetime  # the quota counter's version: any change to the token re-seeds it

    @classmethod
    def of(cls, token: Token) -> TokenLimits:
        return cls(token.id, token.rpm, token.max_requests, token.max_concurrency, token.updated_at)


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """The deployment-wide limits. A limit of 0 is off."""

    global_limit: int = 0  # requests per minute, all clients
    ip_limit: int = 0  # requests per minute per client IP (IPv6: per /64)
    token_default: int = 0  # per token without its own rpm, per token_default_window
    token_default_window: float = MINUTE
    count_cache_hits: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitConfig:
        distributed = settings.distributed_rate_limit_enabled
        return cls(
            global_limit=settings.global_rate_limit,
            ip_limit=settings.ip_rate_limit,
            # DISTRIBUTED_RATE_LIMIT_MAX belongs to distributed mode (and to its fallback)
            token_default=settings.distributed_rate_limit_max if distributed else 0,
            token_default_window=settings.distributed_rate_limit_window,
            count_cache_hits=settings.quota_count_cache_hits,
        )

    def token_window(self, token: LimitedToken | None) -> tuple[int, float]:
        """The token's rate limit as (requests, window seconds); (0, ...) when it has none."""
        if token is None:
            return 0, MINUTE
        if token.rpm is None:
            return self.token_default, self.token_default_window
        return token.rpm, MINUTE

    def counts(self, cache_hit: bool) -> bool:
        """Whether this request is counted against the token's quota."""
        return not cache_hit or self.count_cache_hits


class LimitStats:
    """Counters the metrics endpoint reads: plain attributes, plus optional callbacks so the
    app can feed Prometheus counters directly."""

    def __init__(
        self,
        *,
        on_limited: Callable[[str], None] | None = None,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.limited: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.fallbacks = 0  # requests decided by per-process limits because Redis was down
        self.unavailable = 0  # requests refused (503) because Redis was down, fallback off
        self.on_limited = on_limited
        self.on_fallback = on_fallback

    def count_limited(self, kind: str) -> None:
        self.limited[kind] += 1
        if self.on_limited is not None:
            self.on_limited(kind)

    def count_fallback(self) -> None:
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback()


Release = Callable[[], Awaitable[None]]


class Admission:
    """A request let through. ``release()`` must run when the request ends (however it ends);
    it frees the concurrency lease, and is a no-op, safe to repeat, otherwise."""

    __slots__ = ("_release", "limit", "remaining", "reset")

    def __init__(
        self, limit: int = 0, remaining: int = 0, reset: float = 0.0, release: Release | None = None
    ) -> None:
        self.limit = limit  # the tightest rate limit that applied (0: none)
        self.remaining = remaining  # what is left of it after this request
        self.reset = reset  # seconds until its oldest counted request stops counting
        self._release = release

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` for the response (empty when no rate limit applied)."""
        if not self.limit:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset)),
        }

    async def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release()


#: The admission when no limit applies: shared, nothing to release.
NO_LIMITS = Admission()

_MESSAGES = {
    GLOBAL: "The proxy is receiving too many requests ({limit} per minute); retry after {wait}s.",
    IP: "Too many requests from your address ({limit} per minute); retry after {wait}s.",
    TOKEN: "Too many requests for this token ({limit} per {window}); retry after {wait}s.",
    CONCURRENCY: "This token already has {limit} requests in flight; retry when one finishes.",
}


def rejection(kind: str, limit: int, retry_after: float, window: float = MINUTE) -> RateLimited:
    """The error for a refused request: 429 with Retry-After and X-RateLimit-* headers, or
    ``QuotaExceeded``, which retrying cannot cure (``x-should-retry: false`` tells the OpenAI
    SDKs not to)."""
    if kind == QUOTA:
        return QuotaExceeded(headers={"x-should-retry": "false"})
    wait = max(1, math.ceil(retry_after))
    shown_window = "minute" if window == MINUTE else f"{window:g}s"
    message = _MESSAGES[kind].format(limit=limit, wait=wait, window=shown_window)
    return RateLimited(
        message,
        headers={
            "Retry-After": str(wait),
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(wait),
        },
    )


class Limiter(Protocol):
    """Decides whether one request may proceed. Call once per request, after the cache lookup
    (so ``cache_hit`` is known) and before forwarding; raises ``RateLimited``,
    ``QuotaExceeded`` or ``Unavailable``."""

    stats: LimitStats

    async def admit(
        self, token: LimitedToken | None, client_ip: str, *, cache_hit: bool = False
    ) -> Admission: ...

    async def close(self) -> None: ...
