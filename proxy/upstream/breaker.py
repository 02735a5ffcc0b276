"""Circuit breakers per upstream: the protocol and its in-process backend.

A breaker is *closed* until ``failures`` failures fall within ``window`` seconds, or an upstream
answers with a Retry-After; then *open* for ``cooldown`` seconds (or the Retry-After, if longer),
during which its upstream is skipped; then *half-open*: one request (the probe) may try it, and
its success closes the breaker, its failure opens it again. The Redis backend
(proxy/upstream/breaker_redis.py) keeps the same state for every worker."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from shared.config import Settings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
#: a probe that never reported (its worker died) frees the half-open slot after this long
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    window: float = 30.0
    cooldown: float = 30.0


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        settings.breaker_failures, settings.breaker_window, settings.breaker_cooldown
    )


class Breakers(Protocol):
    """One breaker per upstream id. ``allow`` claims the probe of a half-open breaker (so only
    one request probes at a time); ``failure`` and ``success`` report the outcome of a call."""

    async def allow(self, upstream_id: str, now: float) -> bool: ...

    async def failure(self, upstream_id: str, now: float, retry_after: float | None) -> str:
        """Record a failure; the breaker's state after it."""
        ...

    async def success(self, upstream_id: str, now: float) -> None: ...

    async def state(self, upstream_id: str, now: float) -> str: ...


@dataclass(slots=True)
class _Breaker:
    failures: deque[float] = field(default_factory=deque)
    open_until: float = 0.0  # 0: closed
    probe_at: float = 0.0  # when the half-open probe was claimed (0: not claimed)


class MemoryBreakers:
    """Breakers of this worker only (without Redis, each worker learns on its own)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._breakers: dict[str, _Breaker] = {}

    def _get(self, upstream_id: str) -> _Breaker:
        breaker = self._breakers.get(upstream_id)
        if breaker is None:
            breaker = self._breakers[upstream_id] = _Breaker()
        return breaker

    async def allow(self, upstream_id: str, now: float) -> bool:
        breaker = self._breakers.get(upstream_id)
        if breaker is None or not breaker.open_until:
            return True
        if now < breaker.open_until:
            return False
        if breaker.probe_at and now - breaker.probe_at < PROBE_TIMEOUT:
            return False  # another request is probing
        breaker.probe_at = now
        return True

    async def failure(self, upstream_id: str, now: float, retry_after: float | None) -> str:
        policy, breaker = self.policy, self._get(upstream_id)
        failures = breaker.failures
        failures.append(now)
        while failures and failures[0] <= now - policy.window:
            failures.popleft()
        # a failed probe, or too many failures: the full cooldown; a Retry-After alone: its own
        tripped = bool(breaker.open_until) or len(failures) >= policy.failures
        if tripped or retry_after is not None:
            cooldown = policy.cooldown if tripped else 0.0
            breaker.open_until = now + max(cooldown, retry_after or 0.0)
            breaker.probe_at = 0.0
            return OPEN
        return CLOSED

    async def success(self, upstream_id: str, now: float) -> None:
        breaker = self._breakers.get(upstream_id)
        if breaker is not None and breaker.open_until:
            del self._breakers[upstream_id]  # the probe came back: closed, failures forgotten

    async def state(self, upstream_id: str, now: float) -> str:
        breaker = self._breakers.get(upstream_id)
        if breaker is None or not breaker.open_until:
            return CLOSED
        return OPEN if now < breaker.open_until else HALF_OPEN
