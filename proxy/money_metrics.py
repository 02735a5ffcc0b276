"""Tokens and cost by project and model, unpriced requests and soft budget overruns, with a
cap on label pairs so that a client inventing model names cannot grow /metrics without bound."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter

from shared.events import UNPRICED, RequestEvent
from shared.money.amounts import PICOS
from shared.money.cost import event_cost
from shared.money.prices import PriceBook

#: distinct (project, model) pairs a worker labels before the rest count as ("other", "other")
MAX_LABEL_PAIRS = 200
OTHER = "other"


class MoneyMetrics:
    def __init__(self, registry: CollectorRegistry, *, max_pairs: int = MAX_LABEL_PAIRS) -> None:
        self.tokens = Counter(
            "llm_proxy_tokens",
            "Tokens of answered requests, by project, model and kind (prompt, completion, and "
            "the cached and reasoning parts of them).",
            ["project", "model", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "llm_proxy_cost_usd",
            "Cost in dollars of priced requests, by project and model.",
            ["project", "model"],
            registry=registry,
        )
        self.unpriced = Counter(
            "llm_proxy_unpriced_requests",
            "Requests whose model has no price (their cost is unknown), by project and model.",
            ["project", "model"],
            registry=registry,
        )
        self.soft_exceeded = Counter(
            "llm_proxy_budget_soft_exceeded",
            "Requests let through over a soft budget.",
            registry=registry,
        )
        self._pairs: set[tuple[str, str]] = set()
        self._max = max_pairs

    def labels(self, project: str, model: str) -> tuple[str, str]:
        pair = (project, model)
        if pair in self._pairs:
            return pair
        if len(self._pairs) < self._max:
            self._pairs.add(pair)
            return pair
        return OTHER, OTHER

    def observe(self, event: RequestEvent, book: PriceBook | None) -> None:
        """Count one finished request (``book`` None: prices not read yet, cost not counted)."""
        if not event.total_tokens and not event.prompt_tokens and not event.completion_tokens:
            return
        project, model = self.labels(event.project_id, event.model)
        for kind, n in (
            ("prompt", event.prompt_tokens),
            ("completion", event.completion_tokens),
            ("cached", event.cached_tokens),
            ("reasoning", event.reasoning_tokens),
        ):
            if n:
                self.tokens.labels(project, model, kind).inc(n)
        if book is None:
            return
        cost = event_cost(event, book)
        if cost == UNPRICED:
            self.unpriced.labels(project, model).inc()
        elif cost:
            # a float for Prometheus only; the exact figure is the event's
            self.cost.labels(project, model).inc(float(Decimal(cost) / PICOS))
