"""``llm-proxy dispatcher`` and ``llm-proxy worker``: the processes of the event pipeline."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Annotated

import typer

from admin.output import fail
from dispatcher.options import Options
from shared.config import Settings, parse_duration
from shared.errors import LLMProxyError
from shared.logging import setup_logging


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
    except LLMProxyError as exc:
        fail(exc.message)
        raise  # unreachable: fail() exits
    setup_logging(settings.log_level, settings.log_format)
    return settings


def dispatcher(
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Events per transaction. (default 100)"),
    ] = None,
    buffer: Annotated[
        int | None,
        typer.Option("--buffer", min=1, help="Entries read ahead of the writer. (default 2000)"),
    ] = None,
    consumer_name: Annotated[
        str | None,
        typer.Option("--consumer-name", help="Unique name in the group. (default host-pid)"),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="Consumer group (REDIS_CONSUMER_GROUP). (default llm-proxy-dispatchers)",
        ),
    ] = None,
    block_ms: Annotated[
        int | None,
        typer.Option("--block-ms", min=1, help="Wait for new entries, ms. (default 1000)"),
    ] = None,
    claim_idle: Annotated[
        str | None,
        typer.Option(
            "--claim-idle", help="Claim entries idle this long at other consumers. (default 30s)"
        ),
    ] = None,
    max_deliveries: Annotated[
        int | None,
        typer.Option(
            "--max-deliveries", min=1, help="Dead-letter an entry delivered more. (default 5)"
        ),
    ] = None,
) -> None:
    """Move request events from the Redis stream into the database (run one or more).

    Each flag overrides its environment variable (DISPATCHER_BATCH_SIZE, DISPATCHER_BUFFER,
    DISPATCHER_CONSUMER_NAME, REDIS_CONSUMER_GROUP, DISPATCHER_BLOCK_MS, DISPATCHER_CLAIM_IDLE,
    DISPATCHER_MAX_DELIVERIES). Serves /metrics, /health and /ready on DISPATCHER_HTTP_ADDR.
    SIGTERM finishes the batch in hand and exits 0.
    """
    idle = None
    if claim_idle is not None:
        try:
            idle = parse_duration(claim_idle)
        except ValueError:
            fail(f"--claim-idle must be a duration such as 30s or 2m, got {claim_idle!r}")
    if consumer_name is not None and (not consumer_name.strip() or " " in consumer_name):
        fail("--consumer-name must be a non-empty name without spaces")
    if group is not None and (not group.strip() or " " in group):
        fail("--group must be a non-empty name without spaces")
    settings = _settings()
    options = Options.from_settings(
        settings,
        batch_size=batch_size,
        buffer=buffer,
        consumer=consumer_name,
        group=group,
        block_ms=block_ms,
        claim_idle=idle,
        max_deliveries=max_deliveries,
    )
    from dispatcher.service import run_dispatcher  # the pipeline loads only for its commands

    try:
        asyncio.run(run_dispatcher(settings, options))
    except LLMProxyError as exc:
        fail(exc.message)
    except Exception:  # logged through the redacting handler, then a non-zero exit
        logging.getLogger("llm_proxy.dispatcher").exception("dispatcher failed")
        raise SystemExit(1) from None


def worker(
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="Job threads (WORKER_THREADS). (default 4)"),
    ] = None,
) -> None:
    """Run the export and retention jobs that dispatchers enqueue.

    Exports go to EVENT_SINK_FILE and EVENT_SINK_WEBHOOK_URL (set them on dispatchers and
    workers alike); retention follows REQUEST_EVENT_RETENTION_DAYS. SIGTERM finishes the jobs
    in hand, then exits 0."""
    settings = _settings()
    from dispatcher.sinks import run_worker  # the pipeline loads only for its commands

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_worker(settings, threads=threads or settings.worker_threads, stop=stop)
