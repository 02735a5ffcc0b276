"""Budgets and tokens per minute on the request path: reserve an upper-bound estimate before
forwarding, settle to the request's cost when it ends. With Redis, one script call each decides
for every worker of every instance (proxy/budgets/redis.py); without, the database does (one
transaction each)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from proxy.budgets.keys import group_of
from proxy.budgets.redis import RedisBudgets
from proxy.model_scope import model_of
from shared.clock import from_epoch
from shared.errors import BudgetExceeded, LLMProxyError, TpmExceeded, Unavailable
from shared.events import UNPRICED, RequestEvent
from shared.money.amounts import picos_to_usd
from shared.money.budgets import estimate_cost, estimate_tokens
from shared.money.cost import event_cost
from shared.money.prices import PriceBook
from shared.store import AuditEvent, SqlStore
from shared.store.budgets import BudgetLimit, Held

log = logging.getLogger("llm_proxy.budgets")

#: How long the proxy uses the price book it read before reading it again.
PRICES_TTL = 30.0


@dataclass(slots=True)
class Reservation:
    held: list[Held]
    headers: list[tuple[bytes, bytes]]


class Budgeter:
    def __init__(
        self,
        store: SqlStore,
        *,
        default_completion: int,
        on_soft_exceeded: Callable[[], None] | None = None,
        redis: RedisBudgets | None = None,
    ) -> None:
        self.store = store
        self.redis = redis
        self.on_soft_exceeded = on_soft_exceeded
        self.default_completion = default_completion
        self._book: PriceBook | None = None
        self._read_at = 0.0
        self.refused = 0  # requests refused by a hard budget or TPM
        self.soft_exceeded = 0  # requests let through over a soft budget

    def cached_book(self) -> PriceBook | None:
        """The prices last read, without reading (None before the first read)."""
        return self._book

    async def book(self) -> PriceBook:
        now = time.monotonic()
        if self._book is None or now - self._read_at > PRICES_TTL:
            self._book = await self.store.price_book()
            self._read_at = now
        return self._book

    async def reserve(
        self,
        limits: tuple[BudgetLimit, ...],
        project_id: str,
        token_id: str,
        body: bytes | None,
        content_type: bytes | None,
        arrived: float,
    ) -> Reservation:
        """Reserve the most this request can cost, or raise ``BudgetExceeded`` /
        ``TpmExceeded``. A model without a price cannot be held to a dollar budget: a hard
        one refuses it (its cost is unknown, never $0). When nothing can decide (the database
        is needed and cannot answer), ``Unavailable``: no spend goes unchecked."""
        prompt, completion = estimate_tokens(body, self.default_completion)
        model = model_of(body, content_type) if body else None
        now = from_epoch(arrived)
        with _fail_closed():
            row = (await self.book()).lookup(model or "", project_id, now)
        estimate = estimate_cost(row, prompt, completion)
        if estimate is None and any(b.picos is not None and b.hard for b in limits):
            raise BudgetExceeded(
                "A dollar budget applies and this model has no price, so its cost cannot be "
                "held to the budget.",
                headers={"x-should-retry": "false"},
            )
        with _fail_closed():
            if self.redis is not None:
                group = group_of(limits, project_id, token_id)
                decision = await self.redis.reserve(
                    limits, estimate or 0, prompt + completion, now, group
                )
            else:
                decision = await self.store.reserve(limits, estimate or 0, prompt + completion, now)
        refused = decision.refused
        if refused is not None:
            self.refused += 1
            wait = max(1, math.ceil((refused.window.reset(now) - now).total_seconds()))
            error = TpmExceeded if refused.tpm else BudgetExceeded
            raise error(headers={"Retry-After": str(wait)})
        headers = _remaining(limits, decision.used, now)
        if decision.exceeded:
            self.soft_exceeded += 1
            headers.append((b"x-llm-proxy-budget-exceeded", b"soft"))
            if self.on_soft_exceeded is not None:
                self.on_soft_exceeded()
            await self._audit_soft(decision.exceeded, token_id)
        return Reservation(decision.held, headers)

    async def settle(self, reservation: Reservation, event: RequestEvent | None) -> None:
        """Replace the reservation with the request's cost (the writer's figure: the same
        prices, the same function); never raises."""
        try:
            picos = tokens = 0
            if event is not None:
                cost = event_cost(event, await self.book())
                picos = 0 if cost == UNPRICED else cost
                tokens = event.prompt_tokens + event.completion_tokens
            if self.redis is not None:
                await self.redis.settle(reservation.held, picos, tokens)
            else:
                await self.store.settle(reservation.held, picos, tokens)
        except Exception:  # the reservation stays held until its window passes: conservative
            log.exception("settling a budget reservation failed")

    async def close(self) -> None:
        """Write what is left of the settled spend (Redis only; the database needs nothing)."""
        if self.redis is not None:
            await self.redis.close()

    async def _audit_soft(self, exceeded: list[BudgetLimit], token_id: str) -> None:
        try:
            for b in exceeded:
                await self.store.add_audit(
                    AuditEvent(
                        action="budget.soft_exceeded",
                        outcome="success",
                        actor="proxy",
                        target_type="budget",
                        target_id=b.owner_id,
                        details={"window": b.window.key, "token_id": token_id},
                    )
                )
        except Exception:
            log.exception("recording a soft budget overrun failed")


@contextlib.contextmanager
def _fail_closed() -> Iterator[None]:
    """A failure of what decides (not a refusal) becomes 503: no spend goes unchecked."""
    try:
        yield
    except LLMProxyError:
        raise
    except Exception as exc:
        log.warning("budgets cannot be checked (%s): refusing with 503", type(exc).__name__)
        raise Unavailable(
            "Budgets cannot be checked right now; retry shortly.", headers={"Retry-After": "1"}
        ) from None


def _remaining(
    limits: tuple[BudgetLimit, ...], used: list[tuple[int, int]], now: datetime
) -> list[tuple[bytes, bytes]]:
    """``x-llm-proxy-budget-remaining-usd`` / ``-tokens``: the least left of any budget,
    before this request."""
    ordered = sorted(limits, key=lambda b: (b.owner_id, b.window.key))
    usd = [b.picos - u[0] for b, u in zip(ordered, used, strict=True) if b.picos is not None]
    toks = [
        b.tokens - u[1]
        for b, u in zip(ordered, used, strict=True)
        if b.tokens is not None and not b.tpm
    ]
    out = []
    for b, u in zip(ordered, used, strict=True):
        if b.tpm and b.tokens is not None:
            wait = max(1, math.ceil((b.window.reset(now) - now).total_seconds()))
            out += [
                (b"x-ratelimit-limit-tokens", str(b.tokens).encode()),
                (b"x-ratelimit-remaining-tokens", str(max(b.tokens - u[1], 0)).encode()),
                (b"x-ratelimit-reset-tokens", f"{wait}s".encode()),
            ]
    if usd:
        out.append(
            (b"x-llm-proxy-budget-remaining-usd", (picos_to_usd(max(min(usd), 0)) or "0").encode())
        )
    if toks:
        out.append((b"x-llm-proxy-budget-remaining-tokens", str(max(min(toks), 0)).encode()))
    return out
