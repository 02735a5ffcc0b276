"""The local spool: append-only files holding events while Redis is unreachable.

Each worker process owns its files: ``<owner>.lock`` (held with ``flock`` for the life of the
process) and segments ``<owner>.<seq>.jsonl``, one event per line, written with one ``write``
per batch. The kernel drops a dead process's lock, so a live worker can tell a dead owner's
files from a living sibling's whatever pids have been reused since: files whose lock it can
take are orphans, and it adopts and replays them. A segment is deleted once replayed; a crash
during a replay re-sends at most one segment, which the dispatcher's event-id check absorbs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("llm_proxy.bus")

_SEGMENT = re.compile(r"(?P<owner>[A-Za-z0-9-]+)\.(?P<seq>\d{10})\.jsonl")
_LOCK = re.compile(r"(?P<owner>[A-Za-z0-9-]+)\.lock")
_READ_CHUNK = 1 << 20
_RETRY_AFTER = 30.0  # seconds before an unusable spool directory is tried again


def owner_name() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def lock_file(path: Path) -> int | None:
    """Open and exclusively lock ``path`` (created if missing); None if another process has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove(path: Path, what: str) -> None:
    """Delete ``path``; one already gone is fine, another failure is logged."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot delete %s file %s: %s", what, path.name, exc)


def dead_owners(
    directory: Path, me: str, segment: re.Pattern[str]
) -> list[tuple[str, int, Path, list[Path]]]:
    """The owners in ``directory`` other than ``me`` whose lock could be taken (so their
    process is gone), each with its lock's fd (held now), the lock's path and its segment files
    (names matching ``segment``, in order). Shared by the spool and the accepted journal."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    owners: dict[str, list[str]] = {}
    for name in names:
        match = segment.fullmatch(name) or _LOCK.fullmatch(name)
        if match and match.group("owner") != me:
            owners.setdefault(match.group("owner"), []).append(name)
    found = []
    for owner, files in sorted(owners.items()):
        lock_path = directory / f"{owner}.lock"
        try:
            fd = lock_file(lock_path)
        except OSError:
            continue
        if fd is None:
            continue  # its owner is alive
        segments = [directory / f for f in sorted(files) if segment.fullmatch(f)]
        found.append((owner, fd, lock_path, segments))
    return found


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            count += chunk.count(b"\n")
    return count


@dataclass(slots=True)
class Segment:
    path: Path
    events: int = 0  # complete lines not yet replayed
    size: int = 0  # bytes on disk
    offset: int = 0  # bytes already replayed


@dataclass(slots=True)
class Orphan:
    """Segments of a dead worker, adopted with its lock held until they are replayed."""

    owner: str
    lock_fd: int
    lock_path: Path
    segments: deque[Segment] = field(default_factory=deque)


@dataclass(slots=True)
class Chunk:
    segment: Segment
    lines: list[bytes]
    end: int
    torn: bool = False  # the segment ends in an incomplete line (its writer died mid-write)
    lost: int = 0  # events of a segment that vanished from disk (skipped, never replayed)


class Spool:
    """This worker's spool files under ``directory``, capped at ``max_bytes`` on disk."""

    def __init__(self, directory: str, max_bytes: int, *, segment_bytes: int = 0) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 * 1024, min(max_bytes // 8, 16 * 1024**2))
        self.owner = owner_name()
        self.bytes = 0  # size of this worker's segment files
        self._lock_fd: int | None = None
        self._own: deque[Segment] = deque()
        self._orphans: deque[Orphan] = deque()
        self._writer: int | None = None  # fd of the segment being appended to
        self._seq = 0
        # running average, to judge room for events not yet encoded; it starts at the size of a
        # typical request event with every field (so the first estimate is not too small)
        self._line_size = 720.0
        self._retry_at = 0.0
        self._failing = False

    # --- lifecycle ---

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = lock_file(self.directory / f"{self.owner}.lock")
        except OSError as exc:
            self._fail(exc)
            return
        if self._lock_fd is None:
            self._fail(OSError(f"the lock of {self.owner} is held by another process"))

    @property
    def broken(self) -> bool:
        """Whether nothing can be written now (the directory failed; retried after a while)."""
        if self._lock_fd is not None and not self._failing:
            return False
        if time.monotonic() < self._retry_at:
            return True
        if self._lock_fd is None:
            self.open()
            if self._lock_fd is None:
                return True
        self._failing = False
        log.info("event spool in %s is usable again", self.directory)
        return False

    def close(self) -> None:
        """Release everything. Files not yet replayed stay for a live worker to adopt."""
        self._close_writer()
        for orphan in self._orphans:
            os.close(orphan.lock_fd)
        self._orphans.clear()
        if self._lock_fd is not None:
            if not self._own:
                self._unlink(self.directory / f"{self.owner}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- writing ---

    def room_for(self, events: int) -> bool:
        """Whether ``events`` more (not yet encoded) would fit, judged by the average line size
        with a margin."""
        return not self.broken and self.bytes + events * self._line_size * 1.25 <= self.max_bytes

    def observe(self, size: int, lines: int) -> None:
        """Learn the size of encoded events from what is being sent."""
        if lines:
            self._line_size = 0.9 * self._line_size + 0.1 * (size / lines + 1)

    def append(self, lines: list[bytes], owed: list[bool] | None = None) -> list[bool]:
        """Append what the cap allows, oldest first, and every line marked ``owed`` (an event
        whose room was reserved when its request was admitted: the cap governs admission, so
        those are written even past it); return which lines were written. They reach the kernel
        before this returns, so a crash of this process loses none."""
        written = [False] * len(lines)
        if self.broken or not lines:
            return written
        room = self.max_bytes - self.bytes
        taken: list[bytes] = []
        size = 0
        full = False  # once one line does not fit, later ones wait (but owed ones)
        for i, line in enumerate(lines):
            if not (owed and owed[i]) and (full or size + len(line) + 1 > room):
                full = True
                continue
            size += len(line) + 1
            taken.append(line)
            written[i] = True
        if not taken:
            return written
        self.observe(size - len(taken), len(taken))
        try:
            self._write(taken, size)
        except OSError as exc:
            self._fail(exc)
            return [False] * len(lines)
        return written

    def _write(self, lines: list[bytes], size: int) -> None:
        if self._writer is None or self._own[-1].size >= self.segment_bytes:
            self._rotate()
        assert self._writer is not None
        data = b"\n".join(lines) + b"\n"
        view = memoryview(data)
        while view:
            written = os.write(self._writer, view)
            view = view[written:]
        segment = self._own[-1]
        segment.size += size
        segment.events += len(lines)
        self.bytes += size

    def _rotate(self) -> None:
        self._close_writer()
        self._seq += 1
        path = self.directory / f"{self.owner}.{self._seq:010d}.jsonl"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._writer = os.open(path, flags, 0o600)
        self._own.append(Segment(path))

    def _close_writer(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    def _fail(self, exc: OSError) -> None:
        if not self._failing:
            log.error("event spool in %s is unusable: %s", self.directory, exc)
        self._failing = True
        self._retry_at = time.monotonic() + _RETRY_AFTER
        self._close_writer()  # a partly written segment is left as it is; start a new one

    # --- replaying ---

    def has_backlog(self) -> bool:
        return bool(self._orphans) or self.own_backlog()

    def own_backlog(self) -> bool:
        return any(s.offset < s.size for s in self._own)

    def pending_events(self) -> int:
        own = sum(s.events for s in self._own)
        return own + sum(s.events for o in self._orphans for s in o.segments)

    def read_chunk(self, max_lines: int) -> Chunk | None:
        """The next lines to replay: adopted files first (they are older), then our own."""
        while self._orphans:
            orphan = self._orphans[0]
            if orphan.segments:
                return self._read(orphan.segments[0], max_lines)
            self._release(self._orphans.popleft())
        if self._own and (self._own[0].offset < self._own[0].size):
            return self._read(self._own[0], max_lines)
        return None

    def _read(self, segment: Segment, max_lines: int) -> Chunk:
        try:
            return self._read_lines(segment, max_lines)
        except FileNotFoundError:
            # Removed by someone else (a tmp cleaner, an operator): skip it rather than stop
            # every later replay; what it held is reported lost.
            log.error(
                "spool file %s vanished: %d events in it are lost", segment.path, segment.events
            )
            return Chunk(segment, [], segment.size, lost=segment.events)

    def _read_lines(self, segment: Segment, max_lines: int) -> Chunk:
        remaining = segment.size - segment.offset
        with segment.path.open("rb") as fh:
            fh.seek(segment.offset)
            data = fh.read(min(remaining, max(max_lines * 2048, 1 << 16)))
            pieces = data.split(b"\n")
            pieces.pop()  # after the last newline: part of a line, or nothing
            if not pieces and len(data) < remaining:
                # One line longer than the read window: take it whole.
                fh.seek(segment.offset)
                line = fh.readline()
                data, pieces = line, line.split(b"\n")[:1] if line.endswith(b"\n") else []
        lines = pieces[:max_lines]
        if not lines and remaining:
            # Bytes with no newline up to the end: its writer died mid-line; skip them.
            return Chunk(segment, [], segment.size, torn=True)
        return Chunk(segment, lines, segment.offset + sum(len(ln) + 1 for ln in lines))

    def consume(self, chunk: Chunk) -> None:
        """The chunk reached Redis: move past it, deleting segments that are done."""
        segment = chunk.segment
        segment.offset = chunk.end
        segment.events = max(0, segment.events - len(chunk.lines) - chunk.lost)
        if chunk.torn:
            log.warning("discarding an incomplete last line in %s", segment.path.name)
        if segment.offset < segment.size:
            return
        if self._orphans and self._orphans[0].segments and self._orphans[0].segments[0] is segment:
            self._orphans[0].segments.popleft()
            self._unlink(segment.path)
            return
        if self._own and self._own[0] is segment:
            if segment is self._own[-1]:
                self._close_writer()  # the next append starts a new segment
            self._own.popleft()
            self.bytes -= segment.size
            self._unlink(segment.path)

    # --- adopting files of dead workers ---

    def find_orphans(self) -> list[Orphan]:
        """Lock and list the files of dead owners. Safe to run in a thread: touches only the
        directory; hand the result to ``adopt`` on the owning thread."""
        if self.broken:
            return []
        found = []
        for owner, fd, lock_path, files in dead_owners(self.directory, self.owner, _SEGMENT):
            orphan = Orphan(owner, fd, lock_path)
            for path in files:
                try:
                    size = path.stat().st_size
                    orphan.segments.append(Segment(path, _count_lines(path), size))
                except OSError:
                    continue  # another adopter finished it between listdir and now
            found.append(orphan)
        return found

    def adopt(self, orphans: list[Orphan]) -> int:
        """Queue adopted files for replay; return how many events they hold."""
        total = 0
        for orphan in orphans:
            if self.broken:
                os.close(orphan.lock_fd)
                continue
            events = sum(s.events for s in orphan.segments)
            if orphan.segments:
                log.info("replaying %d spooled events left by worker %s", events, orphan.owner)
            total += events
            self._orphans.append(orphan)
        return total

    def _release(self, orphan: Orphan) -> None:
        self._unlink(orphan.lock_path)
        os.close(orphan.lock_fd)

    def _unlink(self, path: Path) -> None:
        remove(path, "spool")
