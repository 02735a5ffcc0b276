"""The durable record of what Redis decided: each worker adds up, per budget bucket, what it
reserved and what it settled, and writes the sums to ``budget_buckets`` in one transaction
every half second, so the database's write load grows with buckets, not with requests, and
the database trails Redis by at most that interval (reservations in flight included)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime

from shared.store import SqlStore
from shared.store.budgets import Held

log = logging.getLogger("llm_proxy.budgets")

Bucket = tuple[str, str, datetime]  # owner, window key, bucket start


class SpendLedger:
    """``reserved()`` and ``settled()`` on the request path (no I/O); a background task
    writes; ``close()`` writes what is left. A write that fails is kept and tried again with
    the next one."""

    def __init__(self, store: SqlStore, *, interval: float = 0.5) -> None:
        self.store = store
        self.interval = interval
        # bucket -> [reserved picos, spent picos, reserved tokens, spent tokens]
        self._pending: dict[Bucket, list[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def reserved(self, held: Sequence[Held]) -> None:
        for h in held:
            self._add(h, (h.picos, 0, h.tokens, 0))

    def settled(self, held: Sequence[Held], picos: int, tokens: int) -> None:
        for h in held:
            self._add(h, (-h.picos, picos, -h.tokens, tokens))

    def _add(self, h: Held, change: tuple[int, int, int, int]) -> None:
        sums = self._pending.setdefault((h.owner_id, h.window_key, h.bucket), [0, 0, 0, 0])
        for i, v in enumerate(change):
            sums[i] += v
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="budget-ledger")

    @property
    def pending(self) -> int:
        """Buckets with changes not yet written."""
        return len(self._pending)

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self.store.add_to_buckets(
                [(*k, v[0], v[1], v[2], v[3]) for k, v in batch.items() if any(v)]
            )
        except BaseException:
            for k, v in batch.items():  # back in, merged with what arrived meanwhile
                sums = self._pending.setdefault(k, [0, 0, 0, 0])
                for i, x in enumerate(v):
                    sums[i] += x
            raise

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:
                if not failing:  # once per outage, not twice a second
                    log.warning("writing budget reservations and spend failed (kept): %s", exc)
                failing = True
            else:
                if failing:
                    log.warning("budget reservations and spend written again")
                failing = False

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except Exception:
            log.exception("budget changes of %d buckets could not be written", self.pending)
