"""The durable record of settlements decided in Redis: each worker adds them up per budget
bucket and writes them to ``budget_buckets`` in one transaction every half second, so the
database's write load grows with buckets, not with requests."""

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
    """``add()`` on the request path (no I/O); a background task writes; ``close()`` writes
    what is left. A write that fails is kept and tried again with the next one."""

    def __init__(self, store: SqlStore, *, interval: float = 0.5) -> None:
        self.store = store
        self.interval = interval
        self._pending: dict[Bucket, list[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, held: Sequence[Held], picos: int, tokens: int) -> None:
        for h in held:
            sums = self._pending.setdefault((h.owner_id, h.window_key, h.bucket), [0, 0])
            sums[0] += picos
            sums[1] += tokens
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="budget-ledger")

    @property
    def pending(self) -> int:
        """Buckets with spend not yet written."""
        return len(self._pending)

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self.store.add_spent([(*k, v[0], v[1]) for k, v in batch.items()])
        except BaseException:
            for k, v in batch.items():  # back in, merged with what arrived meanwhile
                sums = self._pending.setdefault(k, [0, 0])
                sums[0] += v[0]
                sums[1] += v[1]
            raise

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:
                if not failing:  # once per outage, not twice a second
                    log.warning("writing settled budget spend failed (kept, retried): %s", exc)
                failing = True
            else:
                if failing:
                    log.warning("settled budget spend written again")
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
            log.exception("settled budget spend of %d buckets could not be written", self.pending)
