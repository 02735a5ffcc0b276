"""A minimal asyncio HTTP/1.1 client with a keep-alive pool (httptools parser), for the study.

Not production code: no TLS, no proxies, no redirects, no retry on a connection the server closed
while idle. It shows what the upstream hop costs when the client does nothing but HTTP/1.1.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import httptools

HIGH_WATER = 256 * 1024  # bytes buffered for a slow reader before we stop reading the socket


class Response:
    """Status, raw headers and a body delivered as chunks; one per request."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_waiter", "buffered", "headers", "status")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.buffered = 0

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def read(self) -> bytes:
        chunks = []
        async for chunk in self.iter_chunks():
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self.buffered -= len(chunk)
                if conn.paused and conn.response is self and self.buffered < HIGH_WATER // 2:
                    conn.resume()
                yield chunk
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None


class Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self.paused = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None and not response._done:
            response._error = exc or ConnectionError("upstream closed the connection")
            if self.headers_ready is not None and not self.headers_ready.done():
                self.headers_ready.set_exception(response._error)
            response._wake()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()  # type: ignore[union-attr]
        self.headers_ready.set_result(None)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        response._chunks.append(body)
        response.buffered += len(body)
        if response.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        response._wake()

    def on_message_complete(self) -> None:
        response = self.response
        response._done = True  # type: ignore[union-attr]
        response._wake()  # type: ignore[union-attr]
        self.response = None
        if self.paused:
            self.resume()
        if self.parser.should_keep_alive() and not self.closed:
            self.pool.release(self)
        elif self.transport is not None:
            self.transport.close()


class Pool:
    """Idle keep-alive connections to one host:port."""

    def __init__(self, host: str, port: int, max_idle: int = 256) -> None:
        self.host, self.port, self.max_idle = host, port, max_idle
        self.host_header = f"{host}:{port}".encode()
        self.idle: deque[Connection] = deque()

    async def _acquire(self) -> Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        return conn

    def release(self, conn: Connection) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    async def request(
        self, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        """Send a request and return once the response headers are in."""
        conn = await self._acquire()
        response = Response(conn)
        conn.response = response
        conn.headers_ready = ready = asyncio.get_running_loop().create_future()
        lines = [method, b" ", path, b" HTTP/1.1\r\nhost: ", self.host_header]
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
        lines += (b"\r\ncontent-length: ", b"%d" % len(body), b"\r\n\r\n", body)
        conn.transport.write(b"".join(lines))  # type: ignore[union-attr]
        await ready
        return response

    def close(self) -> None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                conn.transport.close()
