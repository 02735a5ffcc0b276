"""The embedded bus: a bounded in-process queue drained by a task that writes to the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from shared.events import RequestEvent
from shared.store import SqlStore
from shared.store.row_errors import is_row_error

log = logging.getLogger("llm_proxy.bus")


class MemoryBus:
    """Events wait in a bounded deque; one task writes them in batches with ``record_events``
    (insert plus aggregates in one transaction). A failed write keeps the batch and retries,
    unless the database refused a row: that event is found by halving the batch, dropped,
    counted (``unrecordable``) and logged, and the rest are written."""

    def __init__(
        self,
        store: SqlStore,
        *,
        capacity: int = 1000,
        batch_size: int = 100,
        flush_interval: float = 0.05,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.dropped = 0
        self.written = 0
        self.spooled = 0  # this bus has no spool; the counter exists for the metrics
        self.unrecordable = 0  # events the database refused (e.g. absurd numbers): dropped
        self.restarts = 0  # the writer task never dies: failures are retried in place
        self._queue: deque[RequestEvent] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="memory-bus")

    def can_record(self) -> bool:
        return len(self._queue) < self.capacity and not self._closing

    def publish(self, event: RequestEvent) -> None:
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("event buffer full: %d events dropped so far", self.dropped)
            return
        self._queue.append(event)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    @property
    def published(self) -> int:
        return self.written

    def buffered(self) -> int:
        return len(self._queue)

    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                continue
            batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            try:
                written = await self._write(batch)
            except Exception:
                if self._closing and backoff > 5:
                    log.exception("giving up writing %d events at shutdown", len(self._queue))
                    return
                log.exception("writing events failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.1
            for _ in batch:
                self._queue.popleft()
            self.written += written

    async def _write(self, batch: list[RequestEvent]) -> int:
        """Write ``batch``; a row the database refuses is dropped and counted, not retried.
        Returns how many events were handed to the database."""
        try:
            await self.store.record_events(batch)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            if len(batch) > 1:
                half = len(batch) // 2
                return await self._write(batch[:half]) + await self._write(batch[half:])
            self.unrecordable += 1
            log.error(
                "request event %s cannot be recorded (%s): dropped; %d so far",
                batch[0].event_id,
                type(exc).__name__,
                self.unrecordable,
            )
            return 0
        return len(batch)

    async def close(self) -> None:
        """Write everything still queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
