"""The in-memory backend: one LRU per worker process, bounded by entries and by bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from proxy.cache.backend import Usage
from proxy.cache.entry import CacheEntry
from proxy.cache.headers import RawHeaders
from proxy.cache.policy import variant_id

_MARKER_SIZE = 200


class _Slot:
    __slots__ = ("entry", "expires_at", "marker", "path", "size")

    def __init__(
        self,
        entry: CacheEntry | None,
        marker: tuple[bytes, ...] | None,
        path: str,
        expires_at: float,
        size: int,
    ) -> None:
        self.entry = entry
        self.marker = marker
        self.path = path
        self.expires_at = expires_at
        self.size = size


class MemoryBackend:
    """Entries are kept as objects, so a hit costs a dict lookup and no decoding. Expired entries
    go when they are next touched or when the LRU bound pushes them out."""

    name = "in-memory"
    scope = "this-process"

    def __init__(
        self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.nbytes = 0  # what the entries cost, roughly (see CacheEntry.size)
        self.entries = 0  # stored responses (Vary markers not counted)
        self.evictions = 0
        self._data: OrderedDict[tuple[str, str], _Slot] = OrderedDict()

    def _live(self, k: tuple[str, str]) -> _Slot | None:
        slot = self._data.get(k)
        if slot is None:
            return None
        if slot.expires_at <= self.clock():
            self._drop(k)
            return None
        self._data.move_to_end(k)
        return slot

    async def get(self, project_id: str, key: str, headers: RawHeaders) -> CacheEntry | None:
        slot = self._live((project_id, key))
        if slot is not None and slot.marker is not None:
            slot = self._live((project_id, f"{key}:{variant_id(slot.marker, headers)}"))
        return slot.entry if slot is not None else None

    async def put(
        self,
        project_id: str,
        key: str,
        path: str,
        entry: CacheEntry,
        vary: tuple[bytes, ...],
        headers: RawHeaders,
    ) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        if vary:
            self._set((project_id, key), _Slot(None, vary, path, entry.expires_at, _MARKER_SIZE))
            key = f"{key}:{variant_id(vary, headers)}"
        self._set((project_id, key), _Slot(entry, None, path, entry.expires_at, size))

    def _set(self, k: tuple[str, str], slot: _Slot) -> None:
        self._drop(k)
        self._data[k] = slot
        self.nbytes += slot.size
        self.entries += slot.entry is not None
        while len(self._data) > self.max_entries or self.nbytes > self.max_bytes:
            _, evicted = self._data.popitem(last=False)
            self.nbytes -= evicted.size
            self.entries -= evicted.entry is not None
            self.evictions += 1

    def _drop(self, k: tuple[str, str]) -> None:
        slot = self._data.pop(k, None)
        if slot is not None:
            self.nbytes -= slot.size
            self.entries -= slot.entry is not None

    async def purge(self, project_id: str | None = None, path_prefix: str | None = None) -> int:
        doomed = [
            (k, slot)
            for k, slot in self._data.items()
            if (project_id is None or k[0] == project_id)
            and (path_prefix is None or slot.path.startswith(path_prefix))
        ]
        for k, _ in doomed:
            self._drop(k)
        return sum(1 for _, slot in doomed if slot.entry is not None)

    async def usage(self) -> Usage:
        return Usage(entries=self.entries, bytes=self.nbytes)

    async def aclose(self) -> None:
        self._data.clear()
        self.nbytes = self.entries = 0
