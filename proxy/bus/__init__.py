"""Event buses: where the proxy hands one event per request without waiting on I/O."""

from __future__ import annotations

from pathlib import Path

from proxy.bus.journal import Journal
from proxy.bus.memory import MemoryBus
from proxy.bus.redis_streams import RedisStreamsBus, ReplicaWait
from proxy.bus.spool import Spool
from proxy.bus.spooling import SpoolingBus
from proxy.redis_client import FastRedis
from shared.config import Settings
from shared.events import EventBus
from shared.store import SqlStore

__all__ = ["Journal", "MemoryBus", "RedisStreamsBus", "Spool", "SpoolingBus", "make_bus"]


def make_bus(settings: Settings, store: SqlStore) -> EventBus:
    """The bus LLM_PROXY_EVENT_BUS asks for (not yet started; ``await bus.start()``)."""
    strict = settings.event_bus_failure_mode == "reject"
    if settings.event_bus == "redis-streams":
        # Its own connection (not the request path's), and no retries inside the client: a
        # failed XADD goes to the spool at once.
        redis = FastRedis.from_settings(settings)
        spool = Spool(settings.spool_dir, settings.event_spool_max_bytes)
        return RedisStreamsBus(
            redis,
            settings.redis_stream_key,
            spool,
            capacity=settings.observability_buffer_size,
            send_timeout=settings.redis_timeout,
            owns_redis=True,
            strict=strict,
            shards=settings.redis_stream_shards,
            wait=ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout),
            journal=_journal(settings, settings.spool_dir),
        )
    spool = Spool(settings.embedded_spool_dir, settings.event_spool_max_bytes)
    return MemoryBus(
        store,
        spool,
        capacity=settings.observability_buffer_size,
        strict=strict,
        journal=_journal(settings, settings.embedded_spool_dir),
    )


def _journal(settings: Settings, spool_dir: str) -> Journal | None:
    """The accepted journal, beside the spool; None with ACCEPTED_RECORD_AFTER_MS=0."""
    if not settings.accepted_record_after_ms:
        return None
    return Journal(
        Path(spool_dir) / "journal", promote_after=settings.accepted_record_after_ms / 1000
    )
