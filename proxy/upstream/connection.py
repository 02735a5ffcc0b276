"""One HTTP/1.1 client connection: an asyncio Protocol per keep-alive connection, the
httptools parser, bounded response heads, flow control both ways, and idle-gap timeouts armed
only while waiting.

Errors: ``UpstreamError`` (the connection failed or broke, or the answer was malformed or too
large), ``UpstreamTimeout`` (silence longer than the read timeout). Nothing here knows about
pools: a connection reports to its ``Owner``. A connection that saw any error is never reused.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol, cast

import httptools

from shared.errors import UpstreamError, UpstreamTimeout

# Body bytes buffered for a slow reader before the socket stops being read.
HIGH_WATER = 256 * 1024


class Owner(Protocol):
    """What a connection needs from whoever keeps it (the pool)."""

    read_timeout: float
    max_header_bytes: int
    max_headers: int

    def put_back(self, conn: Connection) -> None:
        """A finished exchange left the connection reusable."""

    def forget(self, conn: Connection) -> None:
        """The connection closed."""


class _HeadTooLarge(Exception):
    """Raised inside a parser callback: the response head is over its caps."""


class _Unsolicited(Exception):
    """Raised inside a parser callback: bytes after the answer, in the same packet."""


class Response:
    """Status, headers and the body as it arrives. Read with ``read``; then ``release()`` (the
    connection goes back to its pool if the body was read to the end) or ``close()``."""

    __slots__ = (
        "_conn",
        "_deadline",
        "_done",
        "_error",
        "_waiter",
        "buffered",
        "chunks",
        "head_at",
        "head_only",
        "headers",
        "status",
        "until_close",
    )

    def __init__(self, conn: Connection, head_only: bool) -> None:
        self._conn: Connection | None = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.head_only = head_only
        self.until_close = False  # no length and not chunked: the body ends when the socket does
        # when the head was read off the socket (perf_counter), before the request's task runs
        # again: the wait for the upstream ends here (Server-Timing's upstream;dur)
        self.head_at = 0.0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def set_deadline(self, seconds: float) -> None:
        """Give up on the whole exchange after ``seconds`` (UPSTREAM_TIMEOUT)."""
        conn = self._conn
        if conn is not None:
            self._deadline = conn.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.fail(UpstreamTimeout("The upstream took too long."))
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self.headers

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` in lower case, as stored)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes as soon as any are there; b"" at the end of the body."""
        while True:
            chunks = self.chunks
            if chunks:
                chunk = chunks.popleft()
                if len(chunk) > size:
                    chunks.appendleft(chunk[size:])
                    chunk = chunk[:size]
                self.buffered -= len(chunk)
                conn = self._conn
                if conn is not None and conn.paused and self.buffered < HIGH_WATER // 2:
                    conn.resume()
                return chunk
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            conn = self._conn
            if conn is None:
                raise UpstreamError("The upstream response was closed.")
            await conn.wait(self)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = exc
            self.wake()

    def release(self) -> None:
        """Done with the response: a fully read body frees the connection for the next request;
        anything else closes it (the rest of the body would poison the next response)."""
        conn, self._conn = self._conn, None
        if self._deadline is not None:
            self._deadline.cancel()
        if conn is None:
            return
        if self._done and not conn.closed and conn.keep_alive:
            conn.owner.put_back(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Abandon the response (the client went away): close the connection at once."""
        conn, self._conn = self._conn, None
        if self._deadline is not None:
            self._deadline.cancel()
        self.fail(UpstreamError("The upstream response was closed."))
        if conn is not None:
            conn.close()


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.born = self.loop.time()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self._idle_parser: httptools.HttpResponseParser | None = None
        self.response: Response | None = None
        self.headers_ready: asyncio.Future[Response] | None = None
        self.closed = False
        self.paused = False  # reading paused for a slow consumer
        self.keep_alive = True
        self.received = False  # any byte of the current response arrived
        self.head_bytes = 0  # of the current response head, against the owner's caps
        self.head_count = 0
        self.head_raw = 0  # bytes fed while the head is incomplete
        self.idle_since = 0.0
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.forget(self)
        response = self.response
        if response is not None and not response._done:
            if response.until_close and exc is None and self.headers_ready is None:
                response._done = True
                response.wake()
            else:
                self._fail(UpstreamError("The upstream closed the connection."))
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(UpstreamError("The upstream closed the connection."))

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self.received = True
        in_head = self.headers_ready is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._fail(UpstreamError("The upstream sent too large a response head."))
            else:
                self._fail(UpstreamError("The upstream sent a malformed response."))
            self.close()
            return
        if in_head and self.headers_ready is not None:
            # httptools keeps a partial header line to itself: bound the head as it arrives
            self.head_raw += len(data)
            if self.head_raw > self.owner.max_header_bytes:
                self._fail(UpstreamError("The upstream sent too large a response head."))
                self.close()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response._done:  # a second answer to one request
            raise _Unsolicited()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.head_count += 1
        self.head_bytes += len(name) + len(value) + 4
        owner = self.owner
        if self.head_count > owner.max_headers or self.head_bytes > owner.max_header_bytes:
            raise _HeadTooLarge()
        self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response, parser = self.response, self.parser
        assert response is not None and parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200:  # informational: the real response follows
            response.headers.clear()
            self.head_bytes = self.head_count = self.head_raw = 0
            return
        response.status = status
        response.head_at = time.perf_counter()
        self.keep_alive = self.keep_alive and parser.should_keep_alive()
        # RFC 9112 6.3: chunked counts only as the final coding; any other Transfer-Encoding
        # means the body runs to the close (httptools reads it so), and the connection ends.
        has_length = chunked = False
        for name, value in response.headers:
            if name == b"content-length":
                has_length = True
            elif name == b"transfer-encoding":
                chunked = value.rpartition(b",")[2].strip().lower() == b"chunked"
                if not chunked:
                    has_length = False
                    break
        if not (has_length or chunked or response.head_only or status in (204, 304)):
            response.until_close = True
            self.keep_alive = False
        ready, self.headers_ready = self.headers_ready, None
        if ready is not None and not ready.done():
            ready.set_result(response)
        if response.head_only:  # a HEAD answer has no body, whatever its headers say
            self._complete()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is None or response._done:
            return
        response.chunks.append(body)
        response.buffered += len(body)
        if response.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        response.wake()

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.status == 0:  # the end of a 1xx
            return
        self._complete()

    # --- used by the pool and the response ---

    def _complete(self) -> None:
        response = self.response
        if response is None or response._done:
            return
        response._done = True
        # a parser that read a whole answer on a connection kept alive is ready for the next
        # one; after a HEAD (a body its headers announce but never sent) only a fresh one is
        if not response.head_only:
            self._idle_parser = self.parser
        self.parser = None
        if self.paused:
            self.resume()
        response.wake()

    def _fail(self, exc: BaseException) -> None:
        self.keep_alive = False  # whatever went wrong, this connection is not reused
        ready, self.headers_ready = self.headers_ready, None
        if ready is not None and not ready.done():
            ready.set_exception(exc)
        if self.response is not None:
            self.response.fail(exc)

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.owner.forget(self)

    def begin(self, head_only: bool) -> tuple[Response, asyncio.Future[Response]]:
        """Start a new exchange: the last exchange's parser if it ended cleanly, else a fresh
        one (so a HEAD answer never confuses the next one)."""
        parser, self._idle_parser = self._idle_parser, None
        self.parser = parser or httptools.HttpResponseParser(self)
        self.response = response = Response(self, head_only)
        self.headers_ready = ready = self.loop.create_future()
        self.received = False
        self.head_bytes = self.head_count = self.head_raw = 0
        return response, ready

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the socket takes more (a large request body, a slow upstream)."""
        if self._write_paused and not self.closed:
            self._drained = self.loop.create_future()
            await self._drained

    async def wait(self, response: Response) -> None:
        """Wait for more of ``response``'s body, at most the read timeout."""
        waiter = response._waiter = self.loop.create_future()
        timer = self.loop.call_later(self.owner.read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            response._waiter = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("The upstream stopped sending."))
