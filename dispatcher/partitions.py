"""Keeping request_events partitions created ahead while dispatchers run (Postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shared.store import SqlStore

log = logging.getLogger("llm_proxy.dispatcher")

_EVERY = 3600.0
_RETRY = 60.0


async def keep_partitions(store: SqlStore, stopping: asyncio.Event) -> None:
    """At start, then hourly, create the partitions missing ahead (REQUEST_EVENT_PARTITIONS_AHEAD).
    A failure (database down, a lock not granted in time) is logged and retried a minute later;
    writes meanwhile go to the partitions already there, or to the default one."""
    while not stopping.is_set():
        delay = _EVERY
        try:
            created = await store.ensure_partitions()
        except Exception as exc:  # upkeep must never stop the writing
            log.warning("creating request_events partitions failed, retrying in 60s: %s", exc)
            delay = _RETRY
        else:
            if created:
                log.info("created request_events partitions %s", ", ".join(created))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
