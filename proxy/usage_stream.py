"""Usage of a streamed answer, read as the SSE bytes go by, and the usage event we asked for
taken out again; everything else reaches the client exactly as the upstream sent it."""

from __future__ import annotations

import orjson

from proxy.sse import Piece, SseSplitter, parse_event
from proxy.usage import USAGE_MARKERS, Usage, usage_from_tail

_TAIL = 64 * 1024  # the end of a stream kept for its usage event
_HEAD = 64 * 1024  # how far into a stream the model is looked for
#: one per content event: chat and Responses API deltas, legacy completions' text
_DELTA, _TEXT = _DELTA_MARKERS = (b'"delta"', b'"text"')
_COMPACT, _SPACED = USAGE_MARKERS


class SseUsage:
    """Watches one SSE stream, keeping its model, the last usage it reports and how many
    content events reached the client (the completion estimate when no usage ever comes).

    Without ``strip`` the chunks pass through untouched and only counted; the stream's tail is
    kept and read once at the end, where the usage event is. With ``strip`` (we added
    include_usage, the client did not ask for it) the stream is split into events, each passed
    on as soon as it is whole, except the usage-only event, which is read and dropped. Writes
    are never larger than ``max_write``."""

    __slots__ = (
        "_done",
        "_first",
        "_head",
        "_head_bytes",
        "_keep",
        "_splitter",
        "_tail",
        "_trimmed",
        "deltas",
        "max_write",
        "strip",
        "usage",
    )

    def __init__(self, *, strip: bool, max_write: int) -> None:
        self.usage = Usage()
        self.strip = strip
        self.max_write = max_write
        self.deltas = 0
        self._splitter = SseSplitter()
        self._first = True  # the next whole event is the stream's first (may carry a BOM)
        self._keep = True  # the fate of the current event, for its continuation pieces
        self._head: SseSplitter | None = None if strip else SseSplitter(_HEAD)
        self._head_bytes = 0
        self._tail = bytearray()
        self._trimmed = False
        self._done = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Look at ``chunk``; the bytes to send to the client now, in writes of at most
        ``max_write``."""
        if not self.strip:
            self._watch(chunk)
            return [chunk]
        out: list[bytes] = []
        for piece in self._splitter.feed(chunk):
            raw = piece.raw
            if piece.start and piece.end and _COMPACT not in raw and _SPACED not in raw:
                # the common event: whole, not about usage
                if self._first or not self.usage.model:
                    self._absorb(raw)
                    self._first = False
                self._keep = True
                self.deltas += raw.count(_DELTA) + raw.count(_TEXT)
                out.append(raw)
            else:
                self._take(piece, out)
        return self._writes(out)

    def finish(self) -> list[bytes]:
        """The stream ended: the rest of what was held back (only when stripping)."""
        if not self.strip:
            return []
        out: list[bytes] = []
        piece = self._splitter.finish()
        if piece is not None:
            self._take(piece, out)
        return self._writes(out)

    def result(self) -> Usage:
        """The usage seen (read from the kept tail the first time, when passing through)."""
        if not self.strip and not self._done:
            self._done = True
            self._read_tail()
        return self.usage

    # --- stripping ---

    def _take(self, piece: Piece, out: list[bytes]) -> None:
        raw = piece.raw
        if piece.start:
            self._keep = not (piece.end and self._usage_only(raw))
            if self._keep and piece.end and not self.usage.model:
                self._absorb(raw)
            self._first = False
        if self._keep:
            self.deltas += raw.count(_DELTA) + raw.count(_TEXT)
            out.append(raw)

    def _usage_only(self, raw: bytes) -> bool:
        if _COMPACT not in raw and _SPACED not in raw:
            return False
        obj = self._absorb(raw)
        return isinstance(obj, dict) and obj.get("choices") == []

    def _writes(self, out: list[bytes]) -> list[bytes]:
        if not out:
            return out
        data = out[0] if len(out) == 1 else b"".join(out)
        size = self.max_write
        if len(data) <= size:
            return [data]
        return [data[i : i + size] for i in range(0, len(data), size)]

    # --- passing through ---

    def _watch(self, chunk: bytes) -> None:
        tail = self._tail
        start = len(tail)
        tail += chunk
        # from just before the new bytes: a marker the chunk boundary cut in two counts too
        self.deltas += tail.count(_DELTA, max(start - 6, 0)) + tail.count(_TEXT, max(start - 5, 0))
        head = self._head
        if head is not None:  # the model, from the first events
            self._head_bytes += len(chunk)
            for piece in head.feed(chunk):
                if piece.start and piece.end:
                    self._absorb(piece.raw)
                    self._first = False
            if self.usage.model or self._head_bytes > _HEAD:
                self._head = None
        if len(tail) > 4 * _TAIL:
            del tail[:-_TAIL]
            self._trimmed = True

    def _read_tail(self) -> None:
        tail = bytes(self._tail)
        at = max(tail.rfind(_COMPACT), tail.rfind(_SPACED))
        if at < 0:
            return
        # Split from the last blank line before the marker: every blank line contains LF LF,
        # CR CR or LF CR (a CR then a LF is one CRLF line end), so this finds where it begins.
        begin = max(
            tail.rfind(b"\n\n", 0, at), tail.rfind(b"\r\r", 0, at), tail.rfind(b"\n\r", 0, at)
        )
        if begin < 0 and self._trimmed:  # an event longer than the tail (response.completed)
            usage_from_tail(tail, self.usage)
            return
        splitter = SseSplitter()
        pieces = splitter.feed(tail[max(begin - 1, 0) :])
        last = splitter.finish()
        if last is not None:
            pieces.append(last)
        for piece in pieces:
            if _COMPACT in piece.raw or _SPACED in piece.raw:
                self._absorb(piece.raw)
        if not self.usage.found:
            usage_from_tail(tail, self.usage)

    def _absorb(self, raw: bytes) -> object:
        """The event's data as JSON (None if it is not), its model and usage taken."""
        event = parse_event(raw, first=self._first)
        data = event.data
        if not data or data[0] != "{":
            return None
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        self.usage.absorb(obj)
        return obj
