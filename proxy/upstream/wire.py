"""What goes on the wire to the upstream: the body framing (decided once, from data), the
request head built from validated headers, and a body writer that keeps to its framing.

Framing is an int: ``NO_BODY``, ``CHUNKED``, or a Content-Length (>= 0). It is chosen by
``framing()`` from the body's type and its declared length, never read back from bytes, and
the same value drives the head (``head()``) and the body (``write_body()``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Mapping
from typing import NoReturn, Protocol

from shared.errors import InvalidHeader, UpstreamError

Body = bytes | AsyncIterable[bytes]

NO_BODY = -2
CHUNKED = -1

# RFC 9110 5.6.2 token; a value (5.5) holds no control character but HTAB: not CR, LF, NUL
# nor the others a strict peer refuses (obs-text passes on).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Framing and routing are ours: a caller's header of these names would contradict the head.
_OURS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class Sink(Protocol):
    """Where a body is written: a connection."""

    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


def framing(body: Body | None, content_length: int | None) -> int:
    """The framing for ``body``: none, its length (bytes, or a stream whose length the client
    declared), or chunked (a stream of unknown length)."""
    if body is None:
        return NO_BODY
    if isinstance(body, bytes):
        return len(body)
    if content_length is not None:
        if content_length < 0:
            raise InvalidHeader("Malformed Content-Length.")
        return content_length
    return CHUNKED


def head(
    method: str,
    target: bytes,
    host: bytes,
    headers: Mapping[str, str],
    frame: int,
    *,
    close: bool = False,
    extra: bytes = b"",
) -> bytes:
    """The request head. Every header name must be a token and every value free of control
    characters (else ``InvalidHeader``, a 400: nothing is sent). ``extra`` is a pre-validated
    block of header lines (the egress proxy's credentials)."""
    for name in headers:
        if name not in _valid_names:
            _check_name(name)
    # one scan over all values: a control character in any of them is one in the joined text
    if _BAD_VALUE.search("".join(headers.values())) is not None:
        _refuse_value(headers)
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if frame >= 0:
        framing_line = b"content-length: %d\r\n" % frame
    else:
        framing_line = b"transfer-encoding: chunked\r\n" if frame == CHUNKED else b""
    return b"%b %b HTTP/1.1\r\nhost: %b\r\n%b%b%b%b\r\n" % (
        method.encode("ascii"),
        target,
        host,
        lines.encode("latin-1"),
        framing_line,
        b"connection: close\r\n" if close else b"",
        extra,
    )


# Names already found valid: a few distinct ones recur on every request, so each is checked
# with the regex once (bounded, in case a caller ever passes arbitrary names).
_valid_names: set[str] = set()
_MAX_REMEMBERED = 1024


def _check_name(name: str) -> None:
    if _TOKEN.fullmatch(name) is None or name.lower() in _OURS:
        raise InvalidHeader("A request header has an invalid name.")
    if len(_valid_names) < _MAX_REMEMBERED:
        _valid_names.add(name)


def _refuse_value(headers: Mapping[str, str]) -> NoReturn:
    for name, value in headers.items():
        if _BAD_VALUE.search(value) is not None:
            raise InvalidHeader(f"The {name} header holds a control character (CR, LF, NUL …).")
    raise AssertionError("a joined value held a control character no single value holds")


async def write_body(sink: Sink, body: AsyncIterable[bytes], frame: int) -> None:
    """Stream ``body`` in ``frame``: chunk-framed, or counted against its Content-Length
    (more or fewer bytes than declared: ``UpstreamError``; the connection must be dropped)."""
    if frame == NO_BODY:
        raise ValueError("a streamed body needs a length or chunked framing")
    chunked = frame == CHUNKED
    sent = 0
    async for chunk in body:
        if not chunk:
            continue
        sent += len(chunk)
        if chunked:
            sink.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        elif sent > frame:
            raise UpstreamError("The request body is longer than its Content-Length.")
        else:
            sink.write(chunk)
        await sink.drain()
        if sink.closed:
            raise UpstreamError("The upstream closed the connection while receiving the body.")
    if chunked:
        sink.write(b"0\r\n\r\n")
    elif sent != frame:
        raise UpstreamError("The request body is shorter than its Content-Length.")
