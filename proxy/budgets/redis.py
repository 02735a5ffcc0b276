"""Budgets and TPM decided in Redis: one script call to reserve, one to settle, for every
worker of every instance; the database when Redis cannot answer. See docs/costs.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from proxy.budgets.keys import BudgetKeys
from proxy.budgets.ledger import SpendLedger
from proxy.budgets.scripts import RESERVE, SEED, SETTLE
from proxy.limits.distributed import REDIS_DOWN
from proxy.limits.scripts import Script
from proxy.redis_client import FastRedis
from shared.clock import utcnow
from shared.money.budgets import Window
from shared.store import SqlStore
from shared.store.budgets import BudgetLimit, Decision, Held

log = logging.getLogger("llm_proxy.budgets")

#: A counter outlives its window by this much, so a reservation settled late still finds it.
_TTL_MARGIN = timedelta(minutes=1)
#: Seeding races (another worker seeds or the counter expires between the calls) are retried
#: this many times before the database decides the request.
_ATTEMPTS = 3
_BILLION = 10**9


@dataclass(frozen=True, slots=True)
class _Ask:
    """One request's reservation: its budgets in a fixed order, their counters, the estimate."""

    limits: Sequence[BudgetLimit]
    keys: tuple[str, ...]
    picos: int
    tokens: int
    now: datetime


class RedisBudgets:
    """Reservations in Redis counters seeded from ``budget_buckets`` when missing (first use,
    a restart or flush of Redis, a window passed); reservations and settlements written back
    to it by a ``SpendLedger``. When Redis cannot be reached, the database decides as in the
    embedded default (``store.reserve`` / ``store.settle``), and the counters that worker touched
    meanwhile are dropped when Redis answers again, to be seeded afresh with that spend."""

    def __init__(
        self,
        store: SqlStore,
        redis: FastRedis,
        keys: BudgetKeys,
        *,
        ledger: SpendLedger | None = None,
        retry_after_failure: float = 1.0,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.redis = redis
        self.keys = keys
        self.ledger = ledger or SpendLedger(store)
        self.retry_after_failure = retry_after_failure
        self.on_fallback = on_fallback
        self.fallbacks = 0  # reservations the database decided because Redis did not answer
        self._down_until = 0.0
        self._down = False
        self._stale: set[str] = set()  # counters that missed spend decided in the database
        self._healer: asyncio.Task[None] | None = None

    async def reserve(
        self, limits: Sequence[BudgetLimit], picos: int, tokens: int, now: datetime, group: str
    ) -> Decision:
        ordered = sorted(limits, key=lambda b: (b.owner_id, b.window.key))
        ask = _Ask(ordered, tuple(self.keys.key(b, group) for b in ordered), picos, tokens, now)
        if self._down_until:
            mono = time.monotonic()
            if mono < self._down_until:
                return await self._in_database(ask)
            self._down_until = mono + self.retry_after_failure  # this request probes
        try:
            if self._stale:
                await self._drop_stale()
            reply = await self._reserve(ask)
        except REDIS_DOWN as exc:
            self._went_down(exc)
            return await self._in_database(ask)
        if self._down:
            self._down = False
            log.warning("Redis is reachable again: budgets are decided in Redis again")
        self._down_until = 0.0
        if reply is None:  # seeding kept racing: let the database decide this one
            return await self._in_database(ask)
        decision = _decision(ask, reply)
        self.ledger.reserved(decision.held)
        return decision

    async def settle(self, held: Sequence[Held], picos: int, tokens: int) -> None:
        in_db = [h for h in held if h.key is None]
        if in_db:
            await self.store.settle(in_db, picos, tokens)
        mine = [h for h in held if h.key is not None]
        if not mine:
            return
        est_p, est_t = mine[0].picos, mine[0].tokens
        args: list[Any] = [picos - est_p, tokens - est_t, picos, tokens, -est_p, -est_t]
        now = utcnow()
        for h in mine:
            ttl = _ttl_ms(Window.from_key(h.window_key), h.bucket, now)
            args += [int(h.bucket.timestamp()), h.gen, ttl]
        try:
            await self._eval(SETTLE, tuple(cast(str, h.key) for h in mine), args)
        except REDIS_DOWN as exc:  # the reservation stays counted until its window passes
            log.warning("settling in Redis failed (%s); the database records it", exc)
        finally:
            # after Redis, so a counter seeded from the database meanwhile cannot count it
            # twice; whatever Redis said, the database records the cost
            self.ledger.settled(mine, picos, tokens)

    async def close(self) -> None:
        task = self._healer
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.ledger.close()

    async def _reserve(self, ask: _Ask) -> list[Any] | None:
        now = ask.now
        args: list[Any] = [ask.picos, ask.tokens]
        for b in ask.limits:
            args += [
                int(b.window.start(now).timestamp()),
                int(b.window.bucket(now).timestamp()),
                "" if b.picos is None else b.picos,
                "" if b.tokens is None else b.tokens,
                1 if b.hard else 0,
                _ttl_ms(b.window, now, now),
            ]
        for _ in range(_ATTEMPTS):
            reply = await self._eval(RESERVE, ask.keys, args)
            if int(reply[0]) != 2:
                return reply
            missing = [int(i) - 1 for i in reply[1:]]
            await asyncio.gather(*(self._seed(ask.limits[i], ask.keys[i], now) for i in missing))
        return None

    async def _seed(self, limit: BudgetLimit, key: str, now: datetime) -> None:
        args: list[Any] = [secrets.token_hex(8), _ttl_ms(limit.window, now, now)]
        for start, picos, tokens in await self.store.budget_buckets(
            limit.owner_id, limit.window, now
        ):
            epoch = int(start.timestamp())
            args += [f"p:{epoch}", picos, f"t:{epoch}", tokens]
        await self._eval(SEED, (key,), args)

    async def _in_database(self, ask: _Ask) -> Decision:
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback()
        decision = await self.store.reserve(ask.limits, ask.picos, ask.tokens, ask.now)
        if decision.held:
            self._stale.update(ask.keys)
            if self._healer is None:
                self._healer = asyncio.create_task(self._heal(), name="budget-counters")
        return decision

    async def _heal(self) -> None:
        """Drop the bypassed counters as soon as Redis answers, whether or not a request comes
        to this worker (another worker could otherwise go on using them)."""
        try:
            while self._stale:
                await asyncio.sleep(self.retry_after_failure or 0.05)
                try:
                    await self._drop_stale()
                except REDIS_DOWN:
                    continue
        finally:
            self._healer = None

    async def _drop_stale(self) -> None:
        """Counters that missed spend the database decided: deleted, so the next request seeds
        them with it (one key per call: they may sit in different slots)."""
        stale = list(self._stale)
        await asyncio.gather(*(self.redis.command("DEL", k) for k in stale))
        self._stale.difference_update(stale)

    async def _eval(self, script: Script, keys: tuple[str, ...], args: list[Any]) -> list[Any]:
        reply = await script.run(self.redis, keys, args)
        return reply if isinstance(reply, list) else [reply]

    def _went_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_after_failure
        if not self._down:
            self._down = True
            log.warning(
                "Redis unreachable for budgets (%s): the database decides them", type(exc).__name__
            )


def _decision(ask: _Ask, reply: list[Any]) -> Decision:
    used: list[tuple[int, int]] = []
    exceeded: list[BudgetLimit] = []
    gens: list[str] = []
    for i, b in enumerate(ask.limits):
        hi, lo, toks, over, gen = reply[2 + 5 * i : 7 + 5 * i]
        used.append((int(hi) * _BILLION + int(lo), int(toks)))
        gens.append(gen.decode() if isinstance(gen, bytes) else str(gen))
        if int(over) and not b.hard:
            exceeded.append(b)
    if int(reply[0]) == 0:
        return Decision([], used, refused=ask.limits[int(reply[1]) - 1])
    held = [
        Held(b.owner_id, b.window.key, b.window.bucket(ask.now), ask.picos, ask.tokens, k, g)
        for b, k, g in zip(ask.limits, ask.keys, gens, strict=True)
    ]
    return Decision(held, used, exceeded=exceeded)


def _ttl_ms(window: Window, bucket: datetime, now: datetime) -> int:
    """How long a counter must live: until the spend of ``bucket`` stops counting, plus a
    margin."""
    return max(int((window.reset(bucket) - now + _TTL_MARGIN).total_seconds() * 1000), 1000)
