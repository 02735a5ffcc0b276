"""Tokens and cost by project and model, unpriced requests, soft budget overruns and budget
fallbacks, with a cap on label pairs so that a client inventing model names cannot grow /metrics
without bound."""

from __future__ import annotations

from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter

from proxy.tally import Tally
from shared.events import UNPRICED, RequestEvent
from shared.money.amounts import PICOS
from shared.money.cost import event_cost
from shared.money.prices import PriceBook

#: distinct (project, model) pairs a worker labels before the rest count as ("other", "other")
MAX_LABEL_PAIRS = 200
OTHER = "other"


class MoneyMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_pairs: int = MAX_LABEL_PAIRS,
        tally: Tally | None = None,
    ) -> None:
        self.tally = tally or Tally()
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
        self.budget_fallbacks = Counter(
            "llm_proxy_budget_fallbacks",
            "Budget reservations the database decided because Redis did not answer.",
            registry=registry,
        )
        # (project, model) -> its counters, bound once: prometheus_client's labels() is
        # the costly part of counting (validation and a lock), paid per pair, not per request
        self._bound: dict[tuple[str, str], _Bound] = {}
        self._max = max_pairs
        self._real = 0  # pairs labelled as themselves

    def labels(self, project: str, model: str) -> tuple[str, str]:
        """The label pair a request is counted under: its own, or ("other", "other") once
        ``max_pairs`` pairs are taken."""
        return self._counters(project, model).pair

    def _counters(self, project: str, model: str) -> _Bound:
        bound = self._bound.get((project, model))
        if bound is not None:
            return bound
        pair = (project, model) if self._real < self._max else (OTHER, OTHER)
        bound = self._bound.get(pair)
        if bound is None:
            self._real += pair != (OTHER, OTHER)
            bound = self._bound[pair] = _Bound(
                pair,
                self.tokens.labels(*pair, "prompt"),
                self.tokens.labels(*pair, "completion"),
                self.tokens.labels(*pair, "cached"),
                self.tokens.labels(*pair, "reasoning"),
                self.cost.labels(*pair),
                self.unpriced.labels(*pair),
            )
        return bound

    def observe(self, event: RequestEvent, book: PriceBook | None) -> None:
        """Count one finished request (``book`` None: prices not read yet, cost not counted)."""
        if not event.total_tokens and not event.prompt_tokens and not event.completion_tokens:
            return
        bound = self._counters(event.project_id, event.model)
        tally = self.tally
        if event.prompt_tokens:
            tally.inc(bound.prompt, event.prompt_tokens)
        if event.completion_tokens:
            tally.inc(bound.completion, event.completion_tokens)
        if event.cached_tokens:
            tally.inc(bound.cached, event.cached_tokens)
        if event.reasoning_tokens:
            tally.inc(bound.reasoning, event.reasoning_tokens)
        if book is None:
            return
        cost = event_cost(event, book)
        if cost == UNPRICED:
            tally.inc(bound.unpriced)
        elif cost:
            # a float for Prometheus only; the exact figure is the event's
            tally.inc(bound.cost, cost / PICOS)


class _Bound(NamedTuple):
    pair: tuple[str, str]
    prompt: Any
    completion: Any
    cached: Any
    reasoning: Any
    cost: Any
    unpriced: Any
