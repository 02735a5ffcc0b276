"""The embedded bus: events buffered in the process and written to the store in batches,
spilling to a local spool while the database cannot take them (see ``SpoolingBus``)."""

from __future__ import annotations

import logging

from proxy.bus.journal import Journal
from proxy.bus.spool import Spool
from proxy.bus.spooling import SpoolingBus
from shared.events import RequestEvent
from shared.store import SqlStore
from shared.store.row_errors import is_row_error

log = logging.getLogger("llm_proxy.bus")


class StoreSink:
    """``record_events`` (insert plus aggregates in one transaction). A row the database
    refuses is found by halving the batch, dropped and logged; the rest are written. Any other
    failure (a locked SQLite file, a lost connection) raises, and the bus spools."""

    name = "the database"

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    async def send(self, events: list[RequestEvent], lines: list[bytes]) -> int:
        return await self._write(events)

    async def replay(self, lines: list[bytes]) -> int:
        events, refused = [], 0
        for line in lines:
            try:
                events.append(RequestEvent.from_bytes(line))
            except ValueError as exc:
                refused += 1
                log.error("a spooled request event cannot be read (%s): dropped", exc)
        return refused + await self._write(events)

    async def _write(self, batch: list[RequestEvent]) -> int:
        """Write ``batch``; returns how many events the database refused (dropped)."""
        if not batch:
            return 0
        try:
            await self.store.record_events(batch)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            if len(batch) > 1:
                half = len(batch) // 2
                return await self._write(batch[:half]) + await self._write(batch[half:])
            log.error(
                "request event %s cannot be recorded (%s): dropped",
                batch[0].event_id,
                type(exc).__name__,
            )
            return 1
        return 0

    async def close(self) -> None:
        pass


class MemoryBus(SpoolingBus):
    """The spooling bus in front of this process's own store: no dispatcher. While the
    database cannot be written (a long transaction or a backup holding a SQLite lock), events
    go to the spool and are written, in order, once it can; nothing is dropped below the
    spool's cap."""

    def __init__(
        self,
        store: SqlStore,
        spool: Spool,
        *,
        capacity: int = 1000,
        batch_size: int = 100,
        linger: float = 0.05,
        send_timeout: float = 2.0,
        close_timeout: float = 10.0,
        adopt_interval: float = 30.0,
        strict: bool = False,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(
            StoreSink(store),
            spool,
            capacity=capacity,
            batch_size=batch_size,
            linger=linger,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            adopt_interval=adopt_interval,
            strict=strict,
            journal=journal,
        )
        self.store = store

    @property
    def written(self) -> int:
        return self.published
