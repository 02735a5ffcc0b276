"""Reading every shard of the event stream (REDIS_STREAM_SHARDS) in one dispatcher process."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from dispatcher.consumer import Dispatcher
from dispatcher.metrics import DispatcherMetrics
from dispatcher.options import Options
from dispatcher.sinks import Jobs
from shared.store import SqlStore
from shared.streams import shard_keys

if TYPE_CHECKING:
    from dispatcher.tracing import BatchTracing


class Shards:
    """One ``Dispatcher`` per shard, each the same consumer name in that shard's group, so
    the protocol (pending first, XAUTOCLAIM, XACK after commit, trim below every group,
    dead letters) holds per stream unchanged. XREADGROUP over several keys would be
    cross-slot on a Cluster; one reader per shard is not, and a slow shard never holds
    the others back. Every dispatcher process reads every shard."""

    def __init__(self, dispatchers: list[Dispatcher]) -> None:
        self.dispatchers = dispatchers

    def stop(self) -> None:
        for dispatcher in self.dispatchers:
            dispatcher.stop()

    async def run(self) -> None:
        """Until stopped; if one shard's loop fails, the others finish what they hold and
        the failure is raised."""
        tasks = [
            asyncio.create_task(d.run(), name=f"dispatcher-{d.options.stream_key}")
            for d in self.dispatchers
        ]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if any(t.exception() is not None for t in done if not t.cancelled()):
            self.stop()
        await asyncio.wait(tasks)
        for task in tasks:
            task.result()

    async def refresh_stats(self) -> None:
        for dispatcher in self.dispatchers:
            await dispatcher.refresh_stats()


def make_dispatcher(
    redis: aioredis.Redis,
    store: SqlStore,
    options: Options,
    *,
    shards: int,
    metrics: DispatcherMetrics,
    jobs: Jobs | None,
    retention_days: int,
    tracing: BatchTracing | None = None,
) -> Dispatcher | Shards:
    """The dispatcher for ``shards`` streams (1: today's single stream, as is)."""
    keys = shard_keys(options.stream_key, shards)
    made = [
        Dispatcher(
            redis,
            store,
            replace(options, stream_key=key, shard=i),
            metrics=metrics,
            jobs=jobs,
            # one retention schedule for the deployment, kept by shard 0's upkeep, which
            # keeps the partitions ahead too
            retention_days=retention_days if i == 0 else 0,
            keep_partitions=i == 0,
            tracing=tracing,
        )
        for i, key in enumerate(keys)
    ]
    return made[0] if shards == 1 else Shards(made)
