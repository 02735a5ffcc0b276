"""Helpers for event pipeline tests: seeded owners, events, in-process dispatchers, waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from dispatcher.consumer import Dispatcher
from dispatcher.metrics import DispatcherMetrics
from dispatcher.options import Options
from dispatcher.sinks import Jobs
from shared.clock import new_id
from shared.events import RequestEvent
from shared.store import SqlStore
from shared.store.models import Token
from tests.test_store_contract import project, token


@dataclass
class Owners:
    """A project with a few tokens, and the events a test expects per token."""

    project_id: str
    tokens: list[Token]
    expected: dict[str, int] = field(default_factory=dict)  # token id -> admitted requests

    def event(self, i: int, **kw: Any) -> RequestEvent:
        tok = self.tokens[i % len(self.tokens)]
        fields: dict[str, Any] = {
            "event_id": new_id(),
            "request_id": f"req-{i}",
            "ts": time.time(),
            "project_id": self.project_id,
            "token_id": tok.id,
            "method": "POST",
            "path": "/v1/chat/completions",
            "status": 200,
            "prompt_tokens": 3,
            "completion_tokens": 5,
        }
        fields.update(kw)
        event = RequestEvent(**fields)
        if event.error not in ("rate_limit_exceeded", "quota_exceeded", "overloaded"):
            self.expected[tok.id] = self.expected.get(tok.id, 0) + 1
        return event

    async def counts(self, store: SqlStore) -> dict[str, int]:
        out = {}
        for tok in self.tokens:
            got = await store.get_token(tok.id)
            assert got is not None
            out[tok.id] = got.request_count
        return out


async def seed(store: SqlStore, tokens: int = 3, name: str = "pipeline") -> Owners:
    p = await store.create_project(project(name))
    toks = [await store.create_token(token(p.id)) for _ in range(tokens)]
    return Owners(p.id, toks, {t.id: 0 for t in toks})


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def pending(redis: aioredis.Redis, key: str, group: str) -> int:
    summary: Any = await redis.xpending(key, group)
    return int(summary["pending"])


class Running:
    """A Dispatcher running as a task in this test's event loop."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: SqlStore,
        options: Options,
        jobs: Jobs | None = None,
        retention_days: int = 0,
    ) -> None:
        self.metrics = DispatcherMetrics()
        self.dispatcher = Dispatcher(
            redis, store, options, metrics=self.metrics, jobs=jobs, retention_days=retention_days
        )
        self.task = asyncio.create_task(self.dispatcher.run())

    async def stop(self) -> None:
        self.dispatcher.stop()
        await asyncio.wait_for(self.task, 30)

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0


def options(key: str, consumer: str = "d1", **kw: Any) -> Options:
    fields: dict[str, Any] = {
        "stream_key": key,
        "group": "llm-proxy-dispatchers",
        "consumer": consumer,
        "block_ms": 100,
        "claim_idle": 1.0,
        "trim_interval": 0.2,
    }
    fields.update(kw)
    return Options(**fields)
