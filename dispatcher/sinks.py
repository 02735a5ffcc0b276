"""Export sinks (JSONL file, HTTP webhook) and the retention job, as dramatiq actors.

The dispatcher only enqueues (after its commit); ``llm-proxy worker`` runs the jobs, retrying
failures with backoff, so a sink that is down never holds up the database writes. Exports are
at least once: each record carries its ``event_id``, and every webhook POST an
``Idempotency-Key`` derived from the ids it carries, so receivers drop repeats.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Retries, ShutdownNotifications, TimeLimit

from shared.clock import utcnow
from shared.config import Settings
from shared.events import RequestEvent
from shared.redis import make_sync_redis
from shared.store import make_store
from shared.streams import StreamKeys

log = logging.getLogger("llm_proxy.sinks")

QUEUE = "llm-proxy-events"
_MIN_BACKOFF_MS = 1_000
_MAX_BACKOFF_MS = 300_000


def make_broker(settings: Settings) -> RedisBroker:
    """dramatiq's Redis broker on the configured Redis (TLS and ACL user included), its keys
    under the stream's hash tag."""
    client = make_sync_redis(
        settings,
        socket_timeout=max(settings.redis_timeout, 5.0),
        socket_connect_timeout=settings.redis_timeout,
    )
    # Only the middleware our jobs use (no Prometheus exporter, no pipelines or callbacks).
    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Retries()]
    return RedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        namespace=StreamKeys(settings.redis_stream_key).jobs_namespace,
        middleware=middleware,
    )


def idempotency_key(event_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()[:32]


class WebhookError(Exception):
    """The webhook answered with an error status (retried with backoff)."""


class Jobs:
    """The actors, bound to one broker and this process's settings. The dispatcher declares
    them to send; ``llm-proxy worker`` declares the same ones to run them."""

    def __init__(self, broker: RedisBroker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self._file_lock = threading.Lock()
        retry: dict[str, Any] = {
            "max_retries": settings.event_sink_max_retries,
            "min_backoff": _MIN_BACKOFF_MS,
            "max_backoff": _MAX_BACKOFF_MS,
        }
        self.export_file: dramatiq.Actor[[str], None] = dramatiq.actor(
            broker=broker, actor_name="llm_proxy.export_file", queue_name=QUEUE, **retry
        )(self._export_file)
        self.export_webhook: dramatiq.Actor[[str, str], None] = dramatiq.actor(
            broker=broker, actor_name="llm_proxy.export_webhook", queue_name=QUEUE, **retry
        )(self._export_webhook)
        self.prune_events: dramatiq.Actor[[], int] = dramatiq.actor(
            broker=broker, actor_name="llm_proxy.prune_events", queue_name=QUEUE, max_retries=3
        )(self._prune_events)

    # --- the sending side (the dispatcher; blocking calls, run in a thread) ---

    def sinks(self) -> list[str]:
        out = []
        if self.settings.event_sink_file:
            out.append("file")
        if self.settings.event_sink_webhook_url:
            out.append("webhook")
        return out

    def enqueue_export(self, events: Sequence[RequestEvent]) -> dict[str, int]:
        """One file job per batch, one webhook job per EVENT_SINK_WEBHOOK_BATCH_SIZE events."""
        sent: dict[str, int] = {}
        if not events:
            return sent
        if self.settings.event_sink_file:
            self.export_file.send(_jsonl(events))
            sent["file"] = 1
        if self.settings.event_sink_webhook_url:
            size = self.settings.event_sink_webhook_batch_size
            for start in range(0, len(events), size):
                chunk = events[start : start + size]
                self.export_webhook.send(
                    _jsonl(chunk), idempotency_key([e.event_id for e in chunk])
                )
                sent["webhook"] = sent.get("webhook", 0) + 1
        return sent

    # --- the running side (`llm-proxy worker`) ---

    def _export_file(self, lines: str) -> None:
        path = self.settings.event_sink_file
        if not path:
            raise RuntimeError("EVENT_SINK_FILE is not set on this worker")
        data = memoryview(lines.encode())
        # One locked append per batch: lines of concurrent jobs and workers never interleave.
        with self._file_lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                os.close(fd)

    def _export_webhook(self, lines: str, key: str) -> None:
        url = self.settings.event_sink_webhook_url
        if not url:
            raise RuntimeError("EVENT_SINK_WEBHOOK_URL is not set on this worker")
        body = b'{"events":[' + b",".join(lines.encode().splitlines()) + b"]}"
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        token = self.settings.event_sink_webhook_token.get()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only, checked in Settings
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self.settings.event_sink_webhook_timeout
            ) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise WebhookError(f"webhook answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise WebhookError(f"webhook unreachable: {exc}") from None

    def _prune_events(self) -> int:
        days = self.settings.request_event_retention_days
        if days <= 0:
            return 0
        return asyncio.run(_prune(self.settings, days))


def _jsonl(events: Sequence[RequestEvent]) -> str:
    return "".join(event.to_bytes().decode() + "\n" for event in events)


async def _prune(settings: Settings, days: int) -> int:
    cutoff = utcnow() - timedelta(days=days)
    store = make_store(settings)
    await store.open(wait=True)
    try:
        pruned = await store.prune_events(cutoff)
    finally:
        await store.close()
    if pruned.dropped:
        log.info("retention: dropped partitions %s", ", ".join(pruned.dropped))
    log.info("retention: deleted %d request events older than %d days", pruned.deleted, days)
    return pruned.deleted


def run_worker(settings: Settings, *, threads: int, stop: threading.Event) -> None:
    """Run the jobs until ``stop`` is set, then finish the ones in hand."""
    broker = make_broker(settings)
    Jobs(broker, settings)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=1000)
    worker.start()
    log.info("worker running %d threads on queue %s", threads, QUEUE)
    try:
        stop.wait()
    finally:
        worker.stop(timeout=30_000)
        broker.close()
