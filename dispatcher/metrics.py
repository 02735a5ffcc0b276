"""The dispatcher's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dispatcher.deadletter import REASONS


class DispatcherMetrics:
    """Counters the loop updates, and the stream gauges refreshed from XINFO GROUPS, one series
    per shard of the event stream (``shard`` is its index, "0" with a single stream)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.batch_size = Histogram(
            "llm_proxy_dispatcher_batch_size",
            "Entries per batch written to the database.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "llm_proxy_dispatcher_batch_duration_seconds",
            "Time to write and commit one batch (retries included).",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.rows_inserted = Counter(
            "llm_proxy_dispatcher_rows_inserted", "Request events inserted.", registry=r
        )
        self.duplicates = Counter(
            "llm_proxy_dispatcher_duplicates_skipped",
            "Entries whose event was already recorded (redelivery or a retried XADD).",
            registry=r,
        )
        self.dead_letters = Counter(
            "llm_proxy_dispatcher_dead_letters",
            "Entries moved to the dead-letter table, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.dead_letters.labels(reason)
        self.claimed = Counter(
            "llm_proxy_dispatcher_claimed",
            "Entries claimed from other consumers after --claim-idle (XAUTOCLAIM).",
            registry=r,
        )
        self.released = Counter(
            "llm_proxy_dispatcher_released",
            "Entries let go for a peer to claim after writes failed for DISPATCHER_RELEASE_AFTER.",
            registry=r,
        )
        self.acked = Counter(
            "llm_proxy_dispatcher_acked", "Entries acknowledged after commit.", registry=r
        )
        self.write_failures = Counter(
            "llm_proxy_dispatcher_write_failures",
            "Batch writes that failed and will be retried (database unavailable).",
            registry=r,
        )
        self.exports = Counter(
            "llm_proxy_dispatcher_export_jobs",
            "Export jobs enqueued for `llm-proxy worker`, by sink.",
            ["sink"],
            registry=r,
        )
        self.trimmed = Counter(
            "llm_proxy_dispatcher_trimmed",
            "Stream entries trimmed (all groups had acknowledged them).",
            registry=r,
        )
        self.database_up = Gauge(
            "llm_proxy_dispatcher_database_up",
            "1 if the last database write succeeded, else 0.",
            registry=r,
        )
        self.redis_up = Gauge(
            "llm_proxy_dispatcher_redis_up",
            "1 if the last Redis command succeeded, else 0.",
            registry=r,
        )
        self.stream_length = Gauge(
            "llm_proxy_event_stream_length",
            "Entries in the event stream shard (XLEN).",
            ["shard"],
            registry=r,
        )
        self.stream_lag = Gauge(
            "llm_proxy_event_stream_lag",
            "Entries of the shard not yet delivered to the group (XINFO GROUPS lag); -1 if Redis "
            "cannot tell.",
            ["group", "shard"],
            registry=r,
        )
        self.stream_pending = Gauge(
            "llm_proxy_event_stream_pending",
            "Entries of the shard delivered to the group but not yet acknowledged.",
            ["group", "shard"],
            registry=r,
        )
        self.stream_consumers = Gauge(
            "llm_proxy_event_stream_consumers",
            "Consumers in the group on the shard.",
            ["group", "shard"],
            registry=r,
        )
        self.database_ok = True
        self.redis_ok = True
        self.database_up.set(1)
        self.redis_up.set(1)

    def set_database(self, ok: bool) -> None:
        self.database_ok = ok
        self.database_up.set(int(ok))

    def set_redis(self, ok: bool) -> None:
        self.redis_ok = ok
        self.redis_up.set(int(ok))
