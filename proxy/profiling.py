"""Per-request phase timings (PROFILING_ENABLED): a histogram per phase, and the slowest requests
of every worker of an instance, shared through small files beside the multiprocess metrics.

A request's profile is a list of ``(phase, perf_counter at its end)`` marks; each phase lasted
from the previous mark (the request's arrival for the first) to its own. With profiling off the
hot path only tests ``ex.marks is None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("llm_proxy.profiling")

#: The phases a proxied request goes through, in order; a request marks those it reaches.
PHASES = (
    "route",
    "auth",
    "body",
    "cache",
    "limits",
    "accept",
    "upstream_connect",
    "upstream_first_byte",
    "stream",
    "record",
)
Marks = list[tuple[str, float]]


def phases(started: float, marks: Marks) -> dict[str, float]:
    """Milliseconds spent in each phase reached (a phase marked twice adds up)."""
    out: dict[str, float] = {}
    previous = started
    for phase, at in marks:
        out[phase] = out.get(phase, 0.0) + max(at - previous, 0.0) * 1000
        previous = at
    return out


class SlowestRequests:
    """The ``keep`` slowest requests seen, as records ready to show."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()
        self.changed = False

    def threshold(self) -> float:
        """A request must take longer than this (ms) to be kept."""
        return self._heap[0][0] if len(self._heap) >= self.keep else -1.0

    def offer(self, duration_ms: float, record: dict[str, Any]) -> None:
        if duration_ms <= self.threshold():
            return
        item = (duration_ms, next(self._seq), record)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)
        self.changed = True

    def records(self) -> list[dict[str, Any]]:
        return [r for _, _, r in sorted(self._heap, key=lambda x: -x[0])]


class Profiler:
    """One per worker: observes phase histograms, keeps the slowest requests, and writes them
    where every worker of the instance (and so /manage/profiling) can read them."""

    def __init__(self, keep: int, directory: str | None, histogram: Any) -> None:
        self.slowest = SlowestRequests(keep)
        self.directory = Path(directory) / "profiling" if directory else None
        self.histogram = histogram  # labels: phase
        self._children = {p: histogram.labels(p) for p in PHASES}
        self._task: asyncio.Task[None] | None = None

    def finish(self, started: float, marks: Marks, record: dict[str, Any]) -> None:
        """A request ended: its phases into the histograms; itself into the slowest if it is."""
        spent = phases(started, marks)
        for phase, ms in spent.items():
            child = self._children.get(phase)
            if child is not None:
                child.observe(ms / 1000)
        # from arrival to the last mark: the event's duration plus handing the event over
        duration_ms = (marks[-1][1] - started) * 1000 if marks else 0.0
        if duration_ms > self.slowest.threshold():
            self.slowest.offer(
                duration_ms, {**record, "duration_ms": round(duration_ms, 3), "phases_ms": spent}
            )

    async def start(self) -> None:
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._task = asyncio.create_task(self._publish(), name="profiling")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.write()

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.slowest.changed:
                self.write()

    def write(self) -> None:
        """This worker's slowest requests into its file (written whole, then renamed)."""
        if self.directory is None:
            return
        self.slowest.changed = False
        path = self.directory / f"worker-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps(self.slowest.records()))
            tmp.replace(path)
        except OSError as exc:
            log.warning("writing the slowest requests failed: %s", exc)

    def report(self, limit: int) -> list[dict[str, Any]]:
        """The slowest requests of every worker of this instance, slowest first."""
        if self.directory is None:
            return self.slowest.records()[:limit]
        self.write()
        merged: list[dict[str, Any]] = []
        for path in self.directory.glob("worker-*.json"):
            try:
                merged.extend(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # a worker is rewriting it, or it died mid-write
        merged.sort(key=lambda r: -float(r.get("duration_ms", 0)))
        return merged[:limit]


def record_of(request_id: str, method: str, path: str, status: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "method": method,
        "path": path[:200],
        "status": status,
        "at": time.time(),
    }
