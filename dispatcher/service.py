"""Running a dispatcher process: its store, Redis, job broker, HTTP endpoint and signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dispatcher.health import HealthServer
from dispatcher.metrics import DispatcherMetrics
from dispatcher.options import Options
from dispatcher.shards import make_dispatcher
from dispatcher.sinks import Jobs, make_broker
from shared.config import Settings
from shared.redis import make_redis
from shared.store import SqlStore, make_store
from shared.tracing import make_tracing

if TYPE_CHECKING:
    from dispatcher.tracing import BatchTracing

log = logging.getLogger("llm_proxy.dispatcher")


def _tracing(settings: Settings) -> BatchTracing | None:
    otel = make_tracing(settings, "llm-proxy-dispatcher")
    if otel is None:
        return None
    from dispatcher.tracing import BatchTracing  # the optional extra, only when configured

    return BatchTracing(otel)


async def run_dispatcher(settings: Settings, options: Options) -> None:
    """Run until SIGTERM or SIGINT; then finish the entries in hand and return. A second
    signal stops at once (the entries not yet acknowledged stay pending for a peer)."""
    # Outages are logged once by the dispatcher itself, not on every pool reconnect attempt.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    store = make_store(settings, statement_timeout=settings.dispatcher_write_timeout)
    # Servers start before their database is up; writes back off until it answers.
    await store.open(wait=False)
    if settings.db_driver == "sqlite":
        await store.migrate()  # the embedded default needs no separate set-up step
    # A blocking XREADGROUP may take --block-ms: the socket timeout must allow for it.
    redis = make_redis(
        settings,
        timeout=settings.redis_timeout + options.block_ms / 1000,
        retry=Retry(NoBackoff(), 0),
    )
    wants_jobs = bool(
        settings.event_sink_file
        or settings.event_sink_webhook_url
        or settings.request_event_retention_days
    )
    jobs = Jobs(make_broker(settings), settings) if wants_jobs else None
    metrics = DispatcherMetrics()
    tracing = _tracing(settings)
    dispatcher = make_dispatcher(
        redis,
        store,
        options,
        shards=settings.redis_stream_shards,
        metrics=metrics,
        jobs=jobs,
        retention_days=settings.request_event_retention_days,
        tracing=tracing,
    )
    health = None
    if settings.dispatcher_http_addr != "off":
        host, _, port = settings.dispatcher_http_addr.rpartition(":")
        health = HealthServer(
            metrics,
            refresh=dispatcher.refresh_stats,
            probe=lambda: probe_dependencies(store, redis, metrics),
            host=host,
            port=int(port),
        )
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            dispatcher.stop()
        elif main is not None:
            log.warning("second signal: stopping now")
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info(
        "dispatcher %s reading %s as group %s (batch %d, buffer %d)",
        options.consumer,
        options.stream_key,
        options.group,
        options.batch_size,
        options.buffer,
    )
    try:
        if health is not None:
            await health.start()
        await dispatcher.run()
    except asyncio.CancelledError:
        if signals < 2:
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if health is not None:
            await health.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # export the spans still queued
        await redis.aclose()
        await store.close()
        if jobs is not None:
            jobs.broker.close()
    log.info("dispatcher %s stopped", options.consumer)


async def probe_dependencies(
    store: SqlStore, redis: aioredis.Redis, metrics: DispatcherMetrics, seconds: float = 1.5
) -> None:
    """Readiness of an idle dispatcher: can it reach the database and Redis right now? Each
    check is bounded without waiting for a cancelled call to unwind (a silent connection can
    take long to), so /ready always answers."""
    checks = ((store.ping, metrics.set_database), (redis.ping, metrics.set_redis))
    for check, mark in checks:
        task = asyncio.ensure_future(check())
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if not done:
            task.cancel()
            task.add_done_callback(_consume)
            mark(False)
        else:
            mark(task.exception() is None)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
