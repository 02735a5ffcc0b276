"""The one SSE event splitter (WHATWG line ends and dispatch), incremental, bounded, byte-exact.

The proxy never rewrites a stream: it only needs to know where each event begins and ends, so
that it can read the usage event and drop the one it asked for. ``SseSplitter`` therefore cuts
the upstream's bytes into ``Piece``s whose concatenation is exactly what was fed; fields are
parsed only for the events someone asks about (``parse_event``), which keeps the cost per chunk
to one C-level search for blank lines.

Line ends are CRLF, LF or a lone CR, in any mix; an event ends at an empty line. A CR that ends
a chunk may be the first half of a CRLF: when such a CR closes an event, a LF at the start of
the next chunk still belongs to that event and comes out as a continuation piece (``start``
false), so that whoever dropped the event drops the LF with it. An event that outgrows
``max_event`` bytes without its blank line is let go in continuation pieces too (it cannot be
the small usage event we look for), so memory stays bounded whatever the upstream sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Two line ends in a row: the end of an event. A lone CR is one not followed by LF.
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
_LINE_END = re.compile(rb"\r\n|\r|\n")
BOM = b"\xef\xbb\xbf"
MAX_EVENT_BYTES = 1 << 20


@dataclass(slots=True)  # not frozen: made per event, and frozen __init__ costs more
class Piece:
    """Bytes of one event, exactly as received. ``start``: the event begins here (a piece
    without it continues the previous one); ``end``: the event's blank line is in it."""

    raw: bytes
    start: bool = True
    end: bool = True


@dataclass(frozen=True, slots=True)
class SseEvent:
    """The fields of one event (``data`` None when it had no data line: a comment, a keep-alive
    or a bare ``id:`` dispatches nothing to a browser)."""

    type: str = "message"
    data: str | None = None
    id: str | None = None
    retry: int | None = None


class SseSplitter:
    """Feed the upstream's chunks in order; get back the pieces of every event completed."""

    __slots__ = ("_buf", "_continuing", "_cr_open", "_scanned", "max_event")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self.max_event = max_event
        self._buf = b""
        self._scanned = 0  # no blank line ends before this offset of _buf
        self._cr_open = False  # the last event ended on a CR the next byte may pair with
        self._continuing = False  # part of the current event already went out

    def feed(self, chunk: bytes) -> list[Piece]:
        out: list[Piece] = []
        if self._cr_open and chunk:
            self._cr_open = False
            if chunk[0] == 0x0A:  # the LF of a CRLF that ended the previous event
                out.append(Piece(b"\n", start=False))
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        pos, scan = 0, self._scanned
        if b"\r" in buf:
            search = _BLANK_LINE.search
            while (match := search(buf, scan)) is not None:
                end = match.end()
                out.append(Piece(buf[pos:end], not self._continuing))
                self._continuing = False
                pos = scan = end
        else:  # LF only (most upstreams): a plain search finds the same blank lines, faster
            find = buf.find
            while (at := find(b"\n\n", scan)) >= 0:
                end = at + 2
                out.append(Piece(buf[pos:end], not self._continuing))
                self._continuing = False
                pos = scan = end
        size = len(buf)
        if pos == size:
            self._cr_open = size > 0 and buf[-1] == 0x0D
            self._buf, self._scanned = b"", 0
            return out
        if size - pos > self.max_event:
            # keep the last 3 bytes: they may be the first half of the blank line to come
            cut = size - 3
            out.append(Piece(buf[pos:cut], start=not self._continuing, end=False))
            self._continuing = True
            pos = cut
        self._buf = buf[pos:]
        # a blank line can start at most 3 bytes before the end (CR LF CR, then LF)
        self._scanned = max(0, len(self._buf) - 3)
        return out

    def finish(self) -> Piece | None:
        """The stream ended: what is left of an event that never got its blank line (a client
        discards such an event, but its bytes are still the upstream's)."""
        rest, self._buf, self._scanned = self._buf, b"", 0
        if not rest:
            return None
        piece = Piece(rest, start=not self._continuing)
        self._continuing = False
        return piece


def parse_event(raw: bytes, *, first: bool = False) -> SseEvent:
    """The fields of one whole event (``first``: the stream's first, which may carry a BOM).
    Blank lines before its first field (a piece may start with some) dispatch nothing."""
    if first and raw.startswith(BOM):
        raw = raw[3:]
    kind = "message"
    data: list[str] = []
    event_id: str | None = None
    retry: int | None = None
    for line_b in _LINE_END.split(raw):
        if not line_b:
            if data or kind != "message" or event_id is not None or retry is not None:
                break  # the blank line that ends the event
            continue  # a blank line before any field dispatches nothing
        line = line_b.decode("utf-8", "replace")
        if line[0] == ":":
            continue  # a comment
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value or "message"
        elif name == "id":
            if "\0" not in value:
                event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    return SseEvent(kind, "\n".join(data) if data else None, event_id, retry)
