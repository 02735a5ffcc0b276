"""Calling one of a project's several upstreams: retry and fallback while nothing has reached
the client, circuit breakers per upstream, and the per-upstream metrics.

The guarantee (docs/providers.md): a request is sent to another upstream only when the one
before failed *before any byte of its answer was relayed*: it refused or dropped the
connection, sent no response head in time, or answered 408/429/5xx (its body then is read by
nobody). Once the relay has sent the response head to the client, nothing is retried. A request
whose body is still streaming in from the client cannot be replayed and gets one attempt."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from proxy.body import StreamedBody
from proxy.exchange import Exchange
from proxy.metrics import Metrics
from proxy.upstream import Response, Upstream
from proxy.upstream.breaker import OPEN, Breakers
from proxy.upstream.failover import RETRYABLE_STATUSES, Target, plan, retry_after_seconds
from proxy.upstream.wire import Body
from shared.errors import LLMProxyError, UpstreamError, UpstreamTimeout

#: the client header that names a conversation when UPSTREAM_AFFINITY=header
AFFINITY_HEADER = b"x-affinity-key"


class Failover:
    def __init__(
        self,
        upstream: Upstream,
        breakers: Breakers,
        metrics: Metrics,
        *,
        attempts: int,
        budget: float,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = upstream
        self.breakers = breakers
        self.metrics = metrics
        self.max_attempts = attempts
        self.budget = budget
        self.rng = rng or random.Random()

    async def request(
        self,
        ex: Exchange,
        targets: tuple[Target, ...],
        affinity: str | None,
        call: Callable[[Target], tuple[bytes, dict[str, str]]],
        body: Body | None,
    ) -> tuple[Response, Target]:
        """The first usable answer and who gave it, trying ``targets`` in plan order; ``call``
        gives each target's path and headers. The last retryable answer, if nothing better
        came, is returned as it is (the client sees what the upstream said); if no upstream
        answered, the last error is raised. ``ex.attempts`` and ``ex.upstream`` say what was
        done either way."""
        replayable = not isinstance(body, StreamedBody)
        order = plan(targets, affinity, self.rng)
        started = time.monotonic()
        held: tuple[Response, Target] | None = None
        error: LLMProxyError | None = None
        skipped: list[Target] = []
        try:
            for target in order:
                if ex.attempts >= self.max_attempts or (
                    ex.attempts and time.monotonic() - started >= self.budget
                ):
                    break
                if not await self.breakers.allow(target.id, time.time()):
                    skipped.append(target)
                    continue
                if held is not None:
                    # another upstream answers instead; nobody reads this one (closed before the
                    # next call, so a cancelled call leaves nothing open)
                    held[0].close()
                    held = None
                outcome = await self._attempt(ex, target, call, body)
                if isinstance(outcome, LLMProxyError):
                    error = outcome
                elif outcome.status in RETRYABLE_STATUSES:
                    held = (outcome, target)
                    retry_after = retry_after_seconds(outcome.header(b"retry-after"))
                    await self._failed(target, "status", retry_after)
                else:
                    await self._succeeded(target)
                    return outcome, target
                if not replayable:
                    break
        except BaseException:  # cancelled (the client left) while an answer is held
            if held is not None:
                held[0].close()
            raise
        if held is not None:
            return held
        if ex.attempts == 0 and skipped:
            # every breaker is open: rather than refuse, try the first in the plan as a probe
            # (a breaker steers traffic to the others; it must not turn one slow upstream
            # into none at all)
            target = skipped[0]
            outcome = await self._attempt(ex, target, call, body)
            if not isinstance(outcome, LLMProxyError):
                if outcome.status not in RETRYABLE_STATUSES:
                    await self._succeeded(target)
                return outcome, target
            error = outcome
        assert error is not None
        raise error

    async def _attempt(
        self,
        ex: Exchange,
        target: Target,
        call: Callable[[Target], tuple[bytes, dict[str, str]]],
        body: Body | None,
    ) -> Response | LLMProxyError:
        path, headers = call(target)
        ex.attempts += 1
        ex.upstream = target.id
        self.metrics.upstream_requests.labels(target.id).inc()
        length = body.length if isinstance(body, StreamedBody) else None
        try:
            return await self.upstream.request(
                ex.method, target.base_url, path, headers, body, length, ex.marks
            )
        except (UpstreamError, UpstreamTimeout) as exc:
            reason = "timeout" if isinstance(exc, UpstreamTimeout) else "connect"
            await self._failed(target, reason, None)
            return exc

    async def _failed(self, target: Target, reason: str, retry_after: float | None) -> None:
        self.metrics.upstream_errors.labels(target.id, reason).inc()
        state = await self.breakers.failure(target.id, time.time(), retry_after)
        if state == OPEN:
            self._breaker_gauge(target, closed=False)

    async def _succeeded(self, target: Target) -> None:
        await self.breakers.success(target.id, time.time())
        self._breaker_gauge(target, closed=True)

    def _breaker_gauge(self, target: Target, *, closed: bool) -> None:
        self.metrics.upstream_breaker_open.labels(target.id).set(0 if closed else 1)

    async def failed_mid_stream(self, target: Target) -> None:
        """An answer that broke after it began counts against its upstream's breaker (the
        request itself is not retried)."""
        await self._failed(target, "stream", None)
