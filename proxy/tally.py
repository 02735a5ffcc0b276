"""Counter and histogram updates of one event-loop pass, written once per value at its end.

In multiprocess mode every ``inc`` or ``observe`` of prometheus_client takes a lock, checks
the pid and stores into a shared-memory file: about a dozen of them per request, a tenth of a
request's CPU on the benchmark machine. The request path hands its updates to a ``Tally``
instead; what the requests finishing in one pass of the loop added to the same value is summed
and written once, by a callback that runs before the loop next waits for I/O. A scrape (a later
callback) therefore never misses an update, and a worker that dies loses at most the updates
of the pass it died in, as it would lose the requests themselves.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any, Protocol


class _Value(Protocol):
    def inc(self, amount: float) -> None: ...


class Tally:
    def __init__(self) -> None:
        self._pending: dict[_Value, float] = {}
        self._scheduled = False

    def inc(self, counter: Any, amount: float = 1.0) -> None:
        """``counter.inc(amount)`` (a labelled child of a Counter), at the end of this pass."""
        value = getattr(counter, "_value", None)
        if value is None:  # not prometheus_client's layout: count it now
            counter.inc(amount)
            return
        self._add(value, amount)

    def observe(self, histogram: Any, amount: float) -> None:
        """``histogram.observe(amount)`` (a labelled child of a Histogram), at the end of this
        pass: the same bucket as prometheus_client picks (the first bound >= amount)."""
        bounds = getattr(histogram, "_upper_bounds", None)
        index = bisect_left(bounds, amount) if bounds is not None and amount == amount else -1
        if index < 0 or index == len(bounds or ()):  # NaN, or another layout: as it says
            histogram.observe(amount)
            return
        self._add(histogram._sum, amount)
        self._add(histogram._buckets[index], 1.0)

    def _add(self, value: _Value, amount: float) -> None:
        pending = self._pending
        pending[value] = pending.get(value, 0.0) + amount
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script, a thread): write now
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is pending (also the loop's callback)."""
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for value, amount in pending.items():
            value.inc(amount)
