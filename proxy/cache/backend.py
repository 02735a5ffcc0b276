"""The interface both cache backends implement, and the counters the cache keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.cache.entry import CacheEntry
from proxy.cache.headers import RawHeaders
from shared.errors import Unavailable


class CacheUnavailable(Unavailable):
    """The backend could not answer (Redis down or slow). Lookups turn this into a bypass."""

    default_message = "The response cache backend (Redis) is unavailable."


@dataclass(slots=True)
class Usage:
    entries: int  # stored entries (Redis: approximate, Vary markers included)
    bytes: int | None  # None when the backend cannot tell cheaply (Redis: see INFO memory)


class CacheBackend(Protocol):
    """Where entries live. Keys are per project: nothing a backend does crosses projects unless
    ``purge`` is called without one."""

    name: str  # "in-memory" or "redis": the metrics label
    scope: str  # what a purge reaches: "this-process" or "all-instances"

    async def get(self, project_id: str, key: str, headers: RawHeaders) -> CacheEntry | None:
        """The live entry at ``key``, following a Vary marker to the variant ``headers`` select.
        Raises ``CacheUnavailable``."""
        ...

    async def put(
        self,
        project_id: str,
        key: str,
        path: str,
        entry: CacheEntry,
        vary: tuple[bytes, ...],
        headers: RawHeaders,
    ) -> None:
        """Store ``entry`` until ``entry.expires_at``; with ``vary``, as the variant ``headers``
        select, leaving a marker at ``key``. Raises ``CacheUnavailable``."""
        ...

    async def purge(self, project_id: str | None = None, path_prefix: str | None = None) -> int:
        """Remove entries (of one project, and/or whose request path starts with
        ``path_prefix``); return how many. Raises ``CacheUnavailable``."""
        ...

    async def usage(self) -> Usage: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class CacheStats:
    """Plain counters, read by the metrics endpoint. Every request the cache sees counts once in
    exactly one of hits, misses and bypasses."""

    backend: str
    hits: int = 0  # answered without an upstream call (collapsed requests included)
    misses: int = 0  # went upstream on a cacheable request (revalidations included)
    bypasses: int = 0  # not eligible (method, client no-store) or the backend was unavailable
    collapsed: int = 0  # of the hits: answered by another request's upstream call
    stores: int = 0  # entries written
    not_stored: int = 0  # upstream answers refused (no-store, private, status, size, ...)
    unavailable: int = 0  # backend calls that failed (each failed lookup is also a bypass)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
