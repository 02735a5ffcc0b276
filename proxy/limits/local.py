"""Per-process limits: sliding-window logs in memory, the token quota in the database."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable

from proxy.limits.admission import (
    CONCURRENCY,
    CONCURRENCY_RETRY,
    GLOBAL,
    IP,
    MINUTE,
    NO_LIMITS,
    QUOTA,
    TOKEN,
    Admission,
    LimitConfig,
    LimitedToken,
    LimitStats,
    rejection,
)
from proxy.limits.clientip import limit_key
from shared.errors import LLMProxyError, Unavailable
from shared.store import SqlStore

log = logging.getLogger("llm_proxy.limits")

Clock = Callable[[], float]

#: How often idle per-IP and per-token logs are dropped (seconds of the limiter's clock).
SWEEP_EVERY = 60.0


class SlidingLog:
    """The times of the requests counted in the last ``window`` seconds, oldest first. Exact:
    no interval of ``window`` seconds ever holds more than the limit, at window edges too."""

    __slots__ = ("times", "window")

    def __init__(self, window: float) -> None:
        self.times: deque[float] = deque()
        self.window = window

    def count(self, now: float) -> int:
        times, edge = self.times, now - self.window
        while times and times[0] <= edge:
            times.popleft()
        return len(times)

    def wait(self, now: float, limit: int) -> float:
        """Seconds until one more request fits (call when ``count(now) >= limit``)."""
        return self.times[len(self.times) - limit] + self.window - now


class LocalLimiter:
    """Limits kept by this process alone (the embedded default, and distributed mode's
    fallback). Rate and concurrency limits hold per process; the quota is exact across
    processes and instances because the database counts it."""

    def __init__(
        self,
        config: LimitConfig,
        store: SqlStore,
        *,
        clock: Clock = time.monotonic,
        stats: LimitStats | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.stats = stats or LimitStats()
        self._global = SlidingLog(MINUTE)
        self._ips: dict[str, SlidingLog] = {}
        self._tokens: dict[str, SlidingLog] = {}
        self._inflight: dict[str, int] = {}
        self._sweep_at = 0.0

    async def admit(
        self,
        token: LimitedToken | None,
        client_ip: str,
        *,
        cache_hit: bool = False,
    ) -> Admission:
        cfg = self.config
        token_limit, token_window = cfg.token_window(token)
        ip = client_ip if cfg.ip_limit else ""
        quota = token is not None and token.max_requests is not None
        cap = (token.max_concurrency or 0) if token is not None else 0
        if not (cfg.global_limit or ip or token_limit or quota or cap):
            return NO_LIMITS
        now = self.clock()
        if now >= self._sweep_at:
            self._sweep(now)

        logs: list[tuple[str, SlidingLog, int]] = []
        if cfg.global_limit:
            logs.append((GLOBAL, self._global, cfg.global_limit))
        if ip:
            logs.append((IP, _log(self._ips, limit_key(ip), MINUTE), cfg.ip_limit))
        if token_limit:
            assert token is not None
            logs.append((TOKEN, _log(self._tokens, token.id, token_window), token_limit))

        kind, limit, wait, window = "", 0, -1.0, MINUTE
        tight: SlidingLog | None = None
        tight_limit = tight_left = 0
        for name, sliding, lim in logs:
            n = sliding.count(now)
            if n >= lim:
                w = sliding.wait(now, lim)
                if w > wait:
                    kind, limit, wait, window = name, lim, w, sliding.window
            elif tight is None or lim - n - 1 < tight_left:
                tight, tight_limit, tight_left = sliding, lim, lim - n - 1
        if cap:
            assert token is not None
            if self._inflight.get(token.id, 0) >= cap and wait < CONCURRENCY_RETRY:
                kind, limit, wait = CONCURRENCY, cap, CONCURRENCY_RETRY
        if kind:
            self.stats.count_limited(kind)
            raise rejection(kind, limit, wait, window)

        # Reserve before awaiting the database, so coroutines of this process cannot all pass
        # the checks during that await; undo if the quota says no.
        for _, sliding, _ in logs:
            sliding.times.append(now)
        if cap:
            assert token is not None
            self._inflight[token.id] = self._inflight.get(token.id, 0) + 1
        if quota:
            assert token is not None
            try:
                ok = await self.take_quota(token, cache_hit)
            except BaseException:
                self._undo(logs, now, token if cap else None)
                raise
            if not ok:
                self._undo(logs, now, token if cap else None)
                self.stats.count_limited(QUOTA)
                raise rejection(QUOTA, token.max_requests or 0, 0.0)

        release = None
        if cap:
            assert token is not None
            release = functools.partial(self._release, token.id)
        if tight is None:
            return Admission(release=release) if release else NO_LIMITS
        return Admission(tight_limit, tight_left, tight.times[0] + tight.window - now, release)

    async def take_quota(self, token: LimitedToken, cache_hit: bool) -> bool:
        """Whether the token's quota admits this request, counting it if it counts: one
        conditional UPDATE in the database, exact across processes and instances."""
        hits = self.config.count_cache_hits
        try:
            if self.config.counts(cache_hit):
                return await self.store.take_quota(token.id, count_cache_hits=hits)
            return await self.store.has_quota(token.id, count_cache_hits=hits)
        except LLMProxyError:
            raise
        except Exception as exc:
            log.error("quota check failed: %s", type(exc).__name__)
            raise Unavailable("The quota store is unavailable; retry shortly.") from exc

    def _undo(
        self, logs: list[tuple[str, SlidingLog, int]], now: float, token: LimitedToken | None
    ) -> None:
        for _, sliding, _ in logs:
            with contextlib.suppress(ValueError):  # already aged out during a very long await
                sliding.times.remove(now)  # equal floats are interchangeable entries
        if token is not None:
            self._drop_inflight(token.id)

    async def _release(self, token_id: str) -> None:
        self._drop_inflight(token_id)

    def _drop_inflight(self, token_id: str) -> None:
        left = self._inflight.get(token_id, 0) - 1
        if left > 0:
            self._inflight[token_id] = left
        else:
            self._inflight.pop(token_id, None)

    def _sweep(self, now: float) -> None:
        """Forget logs with nothing left in their window (bounds memory by recent traffic)."""
        for logs in (self._ips, self._tokens):
            for key in [k for k, v in logs.items() if v.count(now) == 0]:
                del logs[key]
        self._sweep_at = now + SWEEP_EVERY

    async def close(self) -> None:
        pass


def _log(logs: dict[str, SlidingLog], key: str, window: float) -> SlidingLog:
    sliding = logs.get(key)
    if sliding is None:
        sliding = logs[key] = SlidingLog(window)
    else:
        sliding.window = window  # a token's rpm may have changed since
    return sliding
