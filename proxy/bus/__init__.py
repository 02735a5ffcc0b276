"""Event buses: where the proxy hands one event per request without waiting on I/O."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
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

log = logging.getLogger("llm_proxy.bus")

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
    """The accepted journal (None with ACCEPTED_RECORD_AFTER_MS=0). Reject mode has none: there
    every accepted record must be in the sink or the spool, which outlive the machine's memory,
    before the upstream call."""
    if not settings.accepted_record_after_ms or settings.event_bus_failure_mode == "reject":
        return None
    return Journal(
        journal_dir(settings.event_journal_dir, spool_dir),
        promote_after=settings.accepted_record_after_ms / 1000,
    )


#: Where journals go by default: memory, so the write before each upstream call is a copy and
#: never waits for the disk (an append to a file on disk measured up to a millisecond per
#: request under load on the benchmark machine).
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - a private directory in it, checked below


def journal_dir(configured: str, spool_dir: str) -> Path:
    """EVENT_JOURNAL_DIR, else one directory per spool directory in this user's private
    directory under /dev/shm (so two deployments on one host never adopt each other's
    journals, as with their spools), else ``journal/`` in the spool directory."""
    if configured:
        return Path(configured)
    private = _private_dir(SHARED_MEMORY / f"llm-proxy-journal-{os.getuid()}")
    if private is None:
        return Path(spool_dir) / "journal"
    tag = hashlib.sha256(os.path.abspath(spool_dir).encode()).hexdigest()[:16]
    return private / tag


def _private_dir(path: Path) -> Path | None:
    """``path`` as a directory only this user can reach (created so), or None: a directory in a
    world-writable place that someone else made, or opened to others, is never used."""
    try:
        path.parent.stat()
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        log.warning("not using %s for the accepted journal: not a private directory", path)
        return None
    return path
