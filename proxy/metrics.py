"""Prometheus metrics of a proxy worker; under gunicorn, multiprocess mode counts every worker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client import values as prom_values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy.cache import HttpCache, MemoryBackend
from proxy.money_metrics import MoneyMetrics
from proxy.tally import Tally
from shared.events import EventBus

# Seconds; dense below 10 ms where proxy overhead lives, sparse up to long completions.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
# Seconds of proxy overhead per answer: from 50 µs (a cache hit) to where something is wrong.
_OVERHEAD_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1,
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """Set by `llm-proxy server` before workers start (prometheus_client reads it at import)."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """All proxy metrics, registered on ``registry`` (each test or app gets its own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if multiprocess_dir():
            # the value class is chosen when prometheus_client is imported, which may have
            # happened before `llm-proxy server` set the directory
            prom_values.ValueClass = prom_values.get_value_class()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._cache_counters: dict[tuple[str, str], Counter] = {}  # (backend, status)
        self.serving: Callable[[], int] | None = None  # requests in flight now, once serving
        self._histograms: dict[str, tuple[Histogram, Histogram, Histogram, Histogram]] = {}
        self.requests = Counter(
            "llm_proxy_requests",
            "Requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "llm_proxy_request_duration_seconds",
            "Time from arrival to the last byte sent.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.phase_duration = Histogram(
            "llm_proxy_phase_duration_seconds",
            "With PROFILING_ENABLED: time spent in each phase of a request.",
            ["phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "llm_proxy_upstream_duration_seconds",
            "Time from sending upstream to the last upstream byte.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "llm_proxy_time_to_first_byte_seconds",
            "Time from arrival to the first response body byte sent to the client.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llm_proxy_overhead_seconds",
            "The proxy's own time for a request, from its first bytes to the end of its "
            "recording after the answer's last byte, upstream waits and client flow control "
            "excluded; Server-Timing proxy;dur is its part up to the response head.",
            ["endpoint"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "llm_proxy_in_flight_requests",
            "Requests being served now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.auth_failures = Counter(
            "llm_proxy_auth_failures",
            "Requests refused for a missing, unknown, expired or "
            "revoked token, or an inactive project.",
            registry=r,
        )
        self.rejections = Counter(
            "llm_proxy_rejected_requests",
            "Requests refused by the proxy itself, by reason.",
            ["reason"],
            registry=r,
        )
        self.event_drops = Counter(
            "llm_proxy_event_bus_dropped_events",
            "Request events the bus could not keep (buffer and spool full).",
            registry=r,
        )
        self.events_unrecordable = Counter(
            "llm_proxy_event_bus_unrecordable_events",
            "Request events dropped because they could not be serialised or stored "
            "(one bad event; the others are recorded).",
            registry=r,
        )
        self.bus_restarts = Counter(
            "llm_proxy_event_bus_sender_restarts",
            "Times the event bus's sender task failed unexpectedly and was restarted.",
            registry=r,
        )
        self.events_published = Counter(
            "llm_proxy_event_bus_published_events",
            "Request events handed on (written to the database, or appended to the stream).",
            registry=r,
        )
        self.events_spooled = Counter(
            "llm_proxy_event_bus_spooled_events",
            "Request events written to the local spool because Redis was unavailable or slow.",
            registry=r,
        )
        self.events_pending = Gauge(
            "llm_proxy_event_bus_pending_events",
            "Request events not yet handed on (in memory or in the spool), summed over workers.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rate_limited = Counter(
            "llm_proxy_rate_limited_requests",
            "Requests refused by a rate limit, quota or concurrency cap, by kind.",
            ["kind"],
            registry=r,
        )
        self.rate_limit_fallbacks = Counter(
            "llm_proxy_rate_limit_fallbacks",
            "Requests limited per process because Redis was unreachable.",
            registry=r,
        )
        self.cache_hits = Counter(
            "llm_proxy_cache_hits",
            "Requests answered from the response cache.",
            ["backend"],
            registry=r,
        )
        self.cache_misses = Counter(
            "llm_proxy_cache_misses",
            "Cacheable requests that went upstream.",
            ["backend"],
            registry=r,
        )
        self.cache_bypasses = Counter(
            "llm_proxy_cache_bypasses",
            "Requests that skipped the cache (not cacheable, or the cache was unavailable).",
            ["backend"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "llm_proxy_cache_entries",
            "Entries in the in-memory response cache.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_bytes = Gauge(
            "llm_proxy_cache_bytes",
            "Bytes held by the in-memory response cache.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_requests = Counter(
            "llm_proxy_upstream_requests",
            "Calls to each upstream of projects with several upstreams, retries included.",
            ["upstream"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "llm_proxy_upstream_errors",
            "Failed calls to each upstream, by reason: connect, timeout, status (408/429/5xx), "
            "stream (broke after it began).",
            ["upstream", "reason"],
            registry=r,
        )
        self.upstream_breaker_open = Gauge(
            "llm_proxy_upstream_breaker_open",
            "1 while an upstream's circuit breaker is open (as a worker last saw it), else 0.",
            ["upstream"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.client_disconnects = Counter(
            "llm_proxy_client_disconnects",
            "Responses cut short because the client went away.",
            registry=r,
        )
        # the request path's counters and histograms, written once per value per loop pass
        self.tally = tally = Tally()
        self.money = MoneyMetrics(r, tally=tally)

    async def follow_bus(self, bus: EventBus, interval: float = 2.0) -> None:
        """Copy the bus's counters into Prometheus now and then (off the request path), and
        sample the requests in flight (``serving``: a gauge written per request would cost two
        shared-memory writes each)."""
        seen = (0, 0, 0, 0, 0)
        while True:
            if self.serving is not None:
                self.in_flight.set(self.serving())
            now = (bus.published, bus.spooled, bus.dropped, bus.unrecordable, bus.restarts)
            for counter, new, old in zip(
                (
                    self.events_published,
                    self.events_spooled,
                    self.event_drops,
                    self.events_unrecordable,
                    self.bus_restarts,
                ),
                now,
                seen,
                strict=True,
            ):
                if new > old:
                    counter.inc(new - old)
            seen = now
            self.events_pending.set(bus.pending())
            await asyncio.sleep(interval)

    def cache_result(self, cache: HttpCache, status: str) -> None:
        backend = cache.backend
        key = (backend.name, status)
        counter = self._cache_counters.get(key)
        if counter is None:
            family = {"hit": self.cache_hits, "miss": self.cache_misses}.get(status)
            counter = self._cache_counters[key] = (family or self.cache_bypasses).labels(
                backend.name
            )
        self.tally.inc(counter)
        if status == "miss" and isinstance(backend, MemoryBackend):
            self.cache_entries.set(backend.entries)
            self.cache_bytes.set(backend.nbytes)

    def observe(
        self,
        endpoint: str,
        method: str,
        status: int,
        duration: float,
        upstream: float,
        ttfb: float,
    ) -> None:
        # label lookups take a lock and build a key each time: keep the children
        key = (endpoint, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(endpoint, method, str(status))
        tally = self.tally
        tally.inc(counter)
        histograms = self._histograms.get(endpoint)
        if histograms is None:
            histograms = self._histograms[endpoint] = (
                self.duration.labels(endpoint),
                self.upstream_duration.labels(endpoint),
                self.ttfb.labels(endpoint),
                self.overhead.labels(endpoint),
            )
        tally.observe(histograms[0], duration)
        if upstream:
            tally.observe(histograms[1], upstream)
        if ttfb:
            tally.observe(histograms[2], ttfb)

    def observe_overhead(self, endpoint: str, overhead: float) -> None:
        """The proxy's own time for one answer (proxy/overhead.py), once its recording is done."""
        if overhead > 0:  # only answers that carried a Server-Timing figure
            histograms = self._histograms.get(endpoint)
            if histograms is not None:  # observe() came first and bound them
                self.tally.observe(histograms[3], overhead)


# The names the operator guide we follow (seeds/000) documents, kept as copies of ours so
# existing dashboards and its hit-ratio formula keep working (docs/operations.md "Metrics").
ALIASES = {"llm_proxy_cache_hits": "cache_hits", "llm_proxy_cache_misses": "cache_misses"}


class _WithAliases(Collector):
    """Everything ``source`` collects, plus each ALIASES family again under its old name."""

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        for family in self.source.collect():
            yield family
            alias = ALIASES.get(family.name)
            if alias is None:
                continue
            copy = Metric(alias, f"{family.documentation} Alias of {family.name}.", family.type)
            cut = len(family.name)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # one creation time per series is enough
                copy.add_sample(alias + sample.name[cut:], sample.labels, sample.value)
            yield copy


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text (aliases included): every worker's values in multiprocess mode, else
    this registry's. Built per scrape, so the request path pays nothing for the aliases."""
    directory = multiprocess_dir()
    source: Collector = registry
    if directory:
        source = prom_multiprocess.MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
    view = CollectorRegistry(auto_describe=False)
    view.register(_WithAliases(source))
    return generate_latest(view), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    """gunicorn's child_exit hook: drop a dead worker's live gauges."""
    if multiprocess_dir():
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
