"""The accepted journal: each worker's own record of the requests it has forwarded and not yet
recorded.

Before a request's upstream call its accepted record is appended here: copied into a shared
memory map of the current segment, so no system call per request, and no fsync: it outlives the
worker, as the page cache does, but not the machine. Each segment's space is allocated when the
segment is made (``posix_fallocate``), so a full file system refuses the segment, and the
records go to the bus, rather than a store into an unbacked page killing the worker. Once the
request's final event is in the sink or the spool, a done line follows. A request still
running after ``promote_after`` seconds has its accepted record sent to the bus as well, so a
long call (a stream, a slow model) is in Redis or the database while it runs, whatever becomes
of the machine. Files are per worker and locked as the spool's are: a live worker adopts a
dead one's files and publishes the accepted records without a done line, which become the
flagged rows of the requests that died in flight. A request ends in one place either way: the
dispatcher and the embedded writer keep one row per event id, and a final always replaces its
accepted row.

Files: ``<owner>.lock`` and segments ``<owner>.<seq>.journal`` of ``segment_bytes`` each, the
unwritten rest zeros; lines ``+<accepted event JSON>`` and ``-<event id>``. A segment is deleted
once every request begun in it is done.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from proxy.bus.spool import dead_owners, lock_file, owner_name, remove
from shared.events import RequestEvent

log = logging.getLogger("llm_proxy.bus")

_SEGMENT = re.compile(r"(?P<owner>[A-Za-z0-9-]+)\.(?P<seq>\d{10})\.journal")
_RETRY_AFTER = 30.0  # seconds before a failed journal directory is tried again


@dataclass(slots=True)
class _Open:
    event: RequestEvent
    segment: int
    finishing: bool = False  # its final is published (on its way to the sink)


@dataclass(slots=True)
class JournalOrphan:
    """A dead worker's journal, its lock held by the adopter until its records are kept."""

    owner: str
    lock_fd: int
    lock_path: Path
    segments: list[Path] = field(default_factory=list)


class Journal:
    def __init__(
        self, directory: str | Path, *, promote_after: float, segment_bytes: int = 1024**2
    ) -> None:
        self.directory = Path(directory)
        self.promote_after = promote_after
        self.segment_bytes = segment_bytes
        self.owner = owner_name()
        self._lock_fd: int | None = None
        self._map: mmap.mmap | None = None  # the current segment
        self._seq = 0
        self._size = 0
        self._open: dict[str, _Open] = {}
        self._segments: dict[int, int] = {}  # segment -> requests begun there, not yet done
        self._young: deque[tuple[float, str]] = deque()  # (begun at, event id), oldest first
        self._retry_at = 0.0

    # --- lifecycle ---

    def open(self) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = lock_file(self.directory / f"{self.owner}.lock")
            if fd is None:
                raise OSError(f"the lock of {self.owner} is held by another process")
            self._lock_fd = fd
            self._next_segment()
        except OSError as exc:
            self._fail(exc)
            return False
        return True

    @property
    def usable(self) -> bool:
        if self._map is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        if self._lock_fd is None:
            return self.open()
        try:
            self._next_segment()
        except OSError as exc:
            self._fail(exc)
            return False
        return True

    def close(self) -> None:
        """Release the files; those of requests still open stay for a live worker to adopt."""
        self._unmap()
        if not self._open:
            for seq in list(self._segments):
                self._unlink(self._path(seq))
            self._segments.clear()
            if self._lock_fd is not None:
                self._unlink(self.directory / f"{self.owner}.lock")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        with contextlib.suppress(OSError):  # the last worker out leaves no empty directory
            self.directory.rmdir()

    # --- the request path ---

    def begin(self, event: RequestEvent) -> bool:
        """Write ``event`` (an accepted record); False if the journal cannot take it now, and
        the caller sends it to the bus instead."""
        if self._map is None and not self.usable:
            return False
        line = b"+" + event.to_bytes() + b"\n"
        if not self._append(line):
            return False
        self._open[event.event_id] = _Open(event, self._seq)
        self._segments[self._seq] += 1
        self._young.append((time.monotonic(), event.event_id))
        return True

    def finishing(self, event: RequestEvent) -> None:
        """The request's final is published: its accepted record need not be sent any more. A
        final with no accepted record here (a cache hit) is journaled itself until it is kept,
        so a worker killed before then still leaves it for the adopter."""
        entry = self._open.get(event.event_id)
        if entry is not None:
            entry.finishing = True
        elif self.begin(event):
            self._open[event.event_id].finishing = True

    def end(self, event_id: str) -> None:
        """The request's final is kept (or was given up on): its entry is done."""
        entry = self._open.pop(event_id, None)
        if entry is None:
            return
        if self._map is not None:  # if not, an adopter would re-send the record: harmless
            self._append(b"-" + event_id.encode() + b"\n")
        left = self._segments[entry.segment] - 1
        if left or entry.segment == self._seq:
            self._segments[entry.segment] = left
        else:  # an older segment with nothing open left
            del self._segments[entry.segment]
            self._unlink(self._path(entry.segment))

    def open_requests(self) -> int:
        return len(self._open)

    def due(self) -> list[RequestEvent]:
        """The accepted records of requests running for longer than ``promote_after`` whose
        finals are not on their way yet; each is returned once."""
        out: list[RequestEvent] = []
        young, entries = self._young, self._open
        limit = time.monotonic() - self.promote_after
        while young and young[0][0] <= limit:
            entry = entries.get(young.popleft()[1])
            if entry is not None and not entry.finishing:
                out.append(entry.event)
        return out

    # --- adopting a dead worker's journal ---

    def find_orphans(self) -> list[JournalOrphan]:
        """Lock and list the journals of dead owners (safe in a thread: touches only files)."""
        return [
            JournalOrphan(owner, fd, lock_path, segments)
            for owner, fd, lock_path, segments in dead_owners(self.directory, self.owner, _SEGMENT)
        ]

    @staticmethod
    def unfinished(orphan: JournalOrphan) -> list[RequestEvent]:
        """The accepted records in ``orphan`` without a done line, in the order begun. A torn or
        malformed line (its writer died mid-write) is skipped."""
        begun: dict[str, RequestEvent] = {}
        done: set[str] = set()
        for path in orphan.segments:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            end = data.find(b"\0")  # the unwritten rest of the segment
            for line in (data if end < 0 else data[:end]).split(b"\n"):
                if line.startswith(b"-"):
                    done.add(line[1:].decode("ascii", "replace"))
                elif line.startswith(b"+"):
                    try:
                        event = RequestEvent.from_bytes(line[1:])
                    except ValueError:
                        continue
                    begun[event.event_id] = event
        return [event for event_id, event in begun.items() if event_id not in done]

    def release(self, orphan: JournalOrphan, *, delete: bool) -> None:
        """Let go of an adopted journal: deleted once its records are kept, else left (and
        unlocked) for the next adoption round."""
        if delete:
            for path in orphan.segments:
                self._unlink(path)
            self._unlink(orphan.lock_path)
        os.close(orphan.lock_fd)

    # --- internals ---

    def _path(self, seq: int) -> Path:
        return self.directory / f"{self.owner}.{seq:010d}.journal"

    def _append(self, line: bytes) -> bool:
        """Copy ``line`` into the current segment, a new one if it is full."""
        size, end = self._size, self._size + len(line)
        try:
            if end > self.segment_bytes:
                if len(line) > self.segment_bytes:
                    raise OSError(f"a record of {len(line)} bytes is over the segment size")
                self._next_segment()
                size, end = 0, len(line)
            assert self._map is not None
            self._map[size:end] = line
        except OSError as exc:
            self._fail(exc)
            return False
        self._size = end
        return True

    def _next_segment(self) -> None:
        old = self._seq
        path = self._path(old + 1)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.segment_bytes)  # the space, now, or an OSError
            mapped = mmap.mmap(fd, self.segment_bytes)
        except OSError:
            os.close(fd)
            self._unlink(path)
            raise
        os.close(fd)  # the map keeps the file
        self._unmap()
        self._map, self._seq, self._size = mapped, old + 1, 0
        self._segments[self._seq] = 0
        if old in self._segments and not self._segments[old]:
            del self._segments[old]
            self._unlink(self._path(old))

    def _unmap(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def _fail(self, exc: OSError) -> None:
        self._unmap()
        self._retry_at = time.monotonic() + _RETRY_AFTER
        log.error(
            "cannot write the accepted journal in %s (%s); accepted records go to the bus "
            "until it can",
            self.directory,
            exc,
        )

    def _unlink(self, path: Path) -> None:
        remove(path, "journal")
