"""A cached response and its compact binary form (what the Redis backend stores)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

Header = tuple[bytes, bytes]

# Layout: version byte, fixed fields, the header block (``name\nvalue\n`` repeated; neither part
# can hold a newline), then the body bytes as they are. No base64, no JSON: a hit decodes with
# one struct unpack, one split and one slice, whatever the body size.
_VERSION = b"\x01"
_FIXED = struct.Struct("<HddBI")  # status, stored_at, expires_at, flags, header block length
_STREAM = 1
# A Vary marker sits at a request's primary key when the upstream varies on headers outside the
# key: a NUL byte, then the lower-case header names joined by newlines.
_MARKER = b"\x00"


@dataclass(slots=True)
class CacheEntry:
    """One stored response: enough to replay it byte for byte."""

    status: int
    headers: tuple[Header, ...]  # lower-case names; hop-by-hop and per-response ones removed
    body: bytes
    stored_at: float  # epoch seconds
    expires_at: float  # epoch seconds
    stream: bool = False  # the body is the raw text/event-stream bytes of a streamed response

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def etag(self) -> str | None:
        value = self.header(b"etag")
        return value.decode("latin-1") if value is not None else None

    @property
    def last_modified(self) -> str | None:
        value = self.header(b"last-modified")
        return value.decode("latin-1") if value is not None else None

    @property
    def has_validators(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    @property
    def size(self) -> int:
        """Bytes this entry costs, roughly: body, headers and a fixed overhead."""
        return len(self.body) + sum(len(k) + len(v) + 2 for k, v in self.headers) + 120

    def ttl_left(self, now: float) -> float:
        return self.expires_at - now


def encode(entry: CacheEntry) -> bytes:
    block = b"".join(k + b"\n" + v + b"\n" for k, v in entry.headers)
    flags = _STREAM if entry.stream else 0
    fixed = _FIXED.pack(entry.status, entry.stored_at, entry.expires_at, flags, len(block))
    return b"".join((_VERSION, fixed, block, entry.body))


def decode(data: bytes) -> CacheEntry:
    """The entry in ``data``; raises ``ValueError`` on anything else (a marker, garbage)."""
    if data[:1] != _VERSION or len(data) < 1 + _FIXED.size:
        raise ValueError("not a cache entry")
    status, stored_at, expires_at, flags, block_len = _FIXED.unpack_from(data, 1)
    start = 1 + _FIXED.size
    end = start + block_len
    if end > len(data):
        raise ValueError("truncated cache entry")
    parts = data[start:end].split(b"\n")
    it = iter(parts[:-1])
    headers = tuple(zip(it, it, strict=True))
    return CacheEntry(status, headers, data[end:], stored_at, expires_at, bool(flags & _STREAM))


def encode_marker(names: tuple[bytes, ...]) -> bytes:
    return _MARKER + b"\n".join(names)


def decode_marker(data: bytes) -> tuple[bytes, ...] | None:
    """The header names of a Vary marker, or None if ``data`` is not one."""
    if data[:1] != _MARKER:
        return None
    return tuple(data[1:].split(b"\n")) if len(data) > 1 else ()
