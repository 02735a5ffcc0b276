"""Single flight: concurrent identical misses in one worker share one upstream call."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from proxy.cache.entry import CacheEntry


@dataclass(slots=True, frozen=True)
class Landing:
    """What a leader's upstream call produced for its followers."""

    entry: CacheEntry
    vary: tuple[bytes, ...]  # the response's Vary names outside the key
    variant: str  # the variant the leader's request selected ("" without vary)


class Flight:
    __slots__ = ("future", "waiters")

    def __init__(self) -> None:
        self.future: asyncio.Future[Landing | None] = asyncio.get_running_loop().create_future()
        self.waiters = 0


class SingleFlight:
    """One ``Flight`` per key while its leader is upstream. Followers wait for the leader's landing,
    at most ``wait`` seconds; ``None`` (not storable, failed, or too slow) sends them upstream."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._flights: dict[tuple[str, str], Flight] = {}

    def lead(self, key: tuple[str, str]) -> Flight | None:
        """A new flight for ``key`` if none is in the air (the caller leads it), else None."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight()
        return flight

    def current(self, key: tuple[str, str]) -> Flight | None:
        return self._flights.get(key)

    async def follow(self, flight: Flight) -> Landing | None:
        flight.waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(flight.future), self.wait)
            return None
        finally:
            flight.waiters -= 1

    def land(self, key: tuple[str, str], flight: Flight, landing: Landing | None) -> None:
        """Release the followers (once) and take the flight off the board, so later requests
        look up (or lead) afresh."""
        if not flight.future.done():
            flight.future.set_result(landing)
        if self._flights.get(key) is flight:
            del self._flights[key]

    def waiting(self, key: tuple[str, str]) -> int:
        """How many requests wait on ``key`` now (for tests and debugging)."""
        flight = self._flights.get(key)
        return flight.waiters if flight is not None else 0
