"""The console's live figures for the whole deployment, from the metrics the proxy already keeps.

Nothing is added to the request path: a task in each worker reads the Prometheus objects every
METRICS_AGGREGATION_INTERVAL_MS and keeps METRICS_RETENTION_MS of history, in one of two places:

- **Redis** (when the deployment uses it): each worker appends what it counted during the
  interval (request, error and cache deltas, latency-bucket deltas, its gauges) to one stream,
  trimmed by time; any worker of any instance reads the stream and sums the workers of each
  interval. Every instance therefore shows the same figures.
- **The multiprocess metrics directory** otherwise (one instance, its gunicorn workers): each
  worker reads every worker's totals through prometheus_client's MultiProcessCollector (as
  /metrics does) and keeps the differences in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.metrics_core import Metric

from proxy.metrics import multiprocess_dir

log = logging.getLogger("llm_proxy.console")


@dataclass
class Totals:
    """Counters since start (summed over whatever was read) and gauges now."""

    requests: float = 0.0
    server_errors: float = 0.0  # 5xx answers
    cache_hits: float = 0.0
    cache_misses: float = 0.0
    #: cumulative request-duration bucket counts by upper bound (``le``), endpoints summed
    buckets: dict[float, float] = field(default_factory=dict)
    in_flight: float = 0.0
    pending_events: float = 0.0

    def minus(self, older: Totals) -> Totals:
        """What was counted between ``older`` and this (gauges as they are now). A counter that
        went down (a worker restarted) counts from zero."""

        def delta(new: float, old: float) -> float:
            return new - old if new >= old else new

        return Totals(
            requests=delta(self.requests, older.requests),
            server_errors=delta(self.server_errors, older.server_errors),
            cache_hits=delta(self.cache_hits, older.cache_hits),
            cache_misses=delta(self.cache_misses, older.cache_misses),
            buckets={le: delta(n, older.buckets.get(le, 0.0)) for le, n in self.buckets.items()},
            in_flight=self.in_flight,
            pending_events=self.pending_events,
        )

    def plus(self, other: Totals) -> Totals:
        buckets = dict(self.buckets)
        for le, n in other.buckets.items():
            buckets[le] = buckets.get(le, 0.0) + n
        return Totals(
            self.requests + other.requests,
            self.server_errors + other.server_errors,
            self.cache_hits + other.cache_hits,
            self.cache_misses + other.cache_misses,
            buckets,
            self.in_flight + other.in_flight,
            self.pending_events + other.pending_events,
        )


def totals_of(families: Iterable[Metric]) -> Totals:
    """Sum the families the console shows (every endpoint, method and backend)."""
    t = Totals()
    for family in families:
        for sample in family.samples:
            name = sample.name
            if name == "llm_proxy_requests_total":
                t.requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    t.server_errors += sample.value
            elif name == "llm_proxy_request_duration_seconds_bucket":
                le = float(sample.labels["le"])
                t.buckets[le] = t.buckets.get(le, 0.0) + sample.value
            elif name == "llm_proxy_cache_hits_total":
                t.cache_hits += sample.value
            elif name == "llm_proxy_cache_misses_total":
                t.cache_misses += sample.value
            elif name == "llm_proxy_in_flight_requests":
                t.in_flight += sample.value
            elif name == "llm_proxy_event_bus_pending_events":
                t.pending_events += sample.value
    return t


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile (seconds) of cumulative bucket counts, interpolated within a bucket as
    Prometheus's histogram_quantile does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # the top bucket has no upper edge: its floor is all we know
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, count
    return lower


@dataclass(frozen=True, slots=True)
class Point:
    """One interval of the whole deployment, as the overview charts it."""

    ts: float
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    error_rate: float | None  # share of answers that were 5xx
    cache_hit_ratio: float | None
    in_flight: float
    pending_events: float


def point_of(ts: float, delta: Totals, seconds: float) -> Point:
    def ms(q: float) -> float | None:
        value = quantile(q, delta.buckets)
        return round(value * 1000, 2) if value is not None else None

    looked_up = delta.cache_hits + delta.cache_misses
    return Point(
        ts=ts,
        rps=round(delta.requests / seconds, 2),
        p50_ms=ms(0.5),
        p95_ms=ms(0.95),
        p99_ms=ms(0.99),
        error_rate=round(delta.server_errors / delta.requests, 4) if delta.requests else None,
        cache_hit_ratio=round(delta.cache_hits / looked_up, 4) if looked_up else None,
        in_flight=delta.in_flight,
        pending_events=delta.pending_events,
    )


class LiveFigures:
    """The sampler task of one worker and the history it reads back for the overview."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval_ms: int,
        retention_ms: int,
        redis: aioredis.Redis | None = None,
        stream_key: str = "",
    ) -> None:
        self.registry = registry
        self.interval = interval_ms / 1000
        self.retention = retention_ms / 1000
        self.redis = redis
        self.stream_key = stream_key
        self.worker = f"{os.uname().nodename}:{os.getpid()}"
        self._local: deque[Point] = deque(maxlen=max(int(self.retention / self.interval), 1))
        self._task: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        if self.redis is not None:
            return "redis"
        return "multiprocess-directory" if multiprocess_dir() else "this-process"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-live")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _deployment_totals(self) -> Totals:
        directory = multiprocess_dir()
        if directory:
            collector = prom_multiprocess.MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
            return totals_of(collector.collect())  # type: ignore[no-untyped-call]
        return totals_of(self.registry.collect())

    async def _run(self) -> None:
        # This worker's own counters start at zero with the process, so with Redis nothing it
        # counts before its first sample is lost. The directory's totals are every worker's
        # since theirs began: that history starts at this worker's first sample.
        previous: Totals | None = Totals() if self.redis is not None else None
        while True:
            # wake on the interval's boundary, so every worker's entry names the same slot
            now = time.time()
            slot = math.floor(now / self.interval) + 1
            await asyncio.sleep(slot * self.interval - now)
            try:
                if self.redis is not None:
                    mine = totals_of(self.registry.collect())  # this worker's own values
                    assert previous is not None
                    await self._publish(slot, mine.minus(previous))
                    previous = mine
                else:
                    # the directory read takes file I/O: keep it off the event loop
                    totals = await asyncio.to_thread(self._deployment_totals)
                    if previous is not None:
                        self._local.append(
                            point_of(slot * self.interval, totals.minus(previous), self.interval)
                        )
                    previous = totals
            except Exception as exc:  # Redis away: the overview says so; requests never wait
                log.warning("console live figures: %s: %s", type(exc).__name__, exc)

    async def _publish(self, slot: int, delta: Totals) -> None:
        assert self.redis is not None
        body = asdict(delta)
        body["buckets"] = list(delta.buckets.items())  # "+Inf" is not JSON: pairs
        keep_from = int((time.time() - self.retention) * 1000)
        await self.redis.xadd(
            self.stream_key,
            {"slot": slot, "w": self.worker, "d": json.dumps(body, separators=(",", ":"))},
            minid=keep_from,
            approximate=True,
        )

    async def history(self) -> list[Point]:
        """Oldest first: one point per interval of the retention window."""
        if self.redis is None:
            return list(self._local)
        since = int((time.time() - self.retention) * 1000)
        entries = await self.redis.xrange(self.stream_key, min=since, max="+") or []
        slots: dict[int, Totals] = {}
        for _, fields in entries:
            if not fields:
                continue
            slot = int(fields[b"slot"])
            data = json.loads(fields[b"d"])
            data["buckets"] = {float(le): n for le, n in data["buckets"]}
            slots[slot] = slots.get(slot, Totals()).plus(Totals(**data))
        current = math.floor(time.time() / self.interval)
        out = []
        for slot in sorted(slots):
            if slot > current:
                continue
            out.append(point_of(slot * self.interval, slots[slot], self.interval))
        return out
