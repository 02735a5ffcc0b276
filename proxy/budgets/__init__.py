"""Budgets and tokens per minute: reservation before forwarding, settlement after, decided in
Redis when the deployment has one and in the database otherwise (docs/costs.md)."""

from __future__ import annotations

from collections.abc import Callable

from proxy.budgets.budgeter import Budgeter, Reservation
from proxy.budgets.keys import BudgetKeys
from proxy.budgets.redis import RedisBudgets
from proxy.limits.keys import key_secret
from proxy.redis_client import FastRedis
from shared.config import Settings
from shared.store import SqlStore

__all__ = ["Budgeter", "RedisBudgets", "Reservation", "make_budgeter"]


def make_budgeter(
    settings: Settings,
    store: SqlStore,
    redis: FastRedis | None,
    *,
    on_soft_exceeded: Callable[[], None] | None = None,
    on_fallback: Callable[[], None] | None = None,
) -> Budgeter:
    """Budgets in Redis when the worker has the lean Redis client (the deployment uses Redis),
    else in the database. ``close()`` it before the store and the client."""
    backend = None
    if redis is not None:
        keys = BudgetKeys(settings.distributed_rate_limit_prefix + "budget:", key_secret(settings))
        backend = RedisBudgets(store, redis, keys, on_fallback=on_fallback)
    return Budgeter(
        store,
        default_completion=settings.budget_default_max_tokens,
        on_soft_exceeded=on_soft_exceeded,
        redis=backend,
    )
