"""Keep-alive connection pools, one per upstream origin, and sending one request through them."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, Mapping

from proxy.http1 import Connection, Response
from shared.errors import LLMProxyError, Overloaded, UpstreamError, UpstreamTimeout

log = logging.getLogger("llm_proxy.upstream")

Body = bytes | AsyncIterable[bytes]
IDLE_TIMEOUT = 60.0  # an idle connection older than this is closed rather than reused


class Pool:
    """Connections to one ``scheme://host:port``: at most ``limit`` open, idle ones reused
    newest first, requests beyond the limit queued for ``acquire_timeout``."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        limit: int,
        acquire_timeout: float,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None,
        reuse: bool = True,
    ) -> None:
        self.host, self.port = host, port
        self.host_header = (host if port in (80, 443) else f"{host}:{port}").encode("idna")
        self.ssl = ssl_context if scheme == "https" else None
        self.limit = limit
        self.acquire_timeout = acquire_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout or 1e9
        self.reuse = reuse
        self.idle: deque[Connection] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._members: set[Connection] = set()

    async def acquire(self) -> tuple[Connection, bool]:
        """A connection, and whether it was used before (then a failure before any answer may
        be the server having closed it while idle, and the request can be retried)."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT:
                return conn, True
            conn.close()
        if self.open < self.limit:
            self.open += 1
            return await self._connect_reserved(), False
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            handed = await asyncio.wait_for(waiter, self.acquire_timeout)
        except TimeoutError:
            raise Overloaded(
                "Too many requests are waiting for the upstream; retry shortly.",
                headers={"retry-after": "1"},
            ) from None
        except asyncio.CancelledError:
            # we may have been handed a connection or a slot just as we were cancelled
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not None:
                    self.put_back(handed)
                else:
                    self._slot_freed()
            raise
        finally:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
        if handed is not None:
            return handed, True
        return await self._connect_reserved(), False  # handed a free slot

    async def connect(self) -> Connection:
        """A new connection, even beyond the limit (a retry, warming)."""
        self.open += 1
        return await self._connect_reserved()

    async def _connect_reserved(self) -> Connection:
        """Open a connection in a slot already counted in ``open``."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            self._slot_freed()
            raise UpstreamTimeout("Connecting to the upstream timed out.") from None
        except OSError as exc:
            self._slot_freed()
            log.warning("connecting to %s:%d failed: %s", self.host, self.port, exc)
            raise UpstreamError() from None
        except BaseException:
            self._slot_freed()
            raise
        self._members.add(conn)
        return conn

    def put_back(self, conn: Connection) -> None:
        if not self.reuse or conn.closed:
            conn.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: Connection) -> None:
        """A connection closed: free its slot (once)."""
        if conn in self._members:
            self._members.discard(conn)
            self._slot_freed()

    def _slot_freed(self) -> None:
        """A slot opened up: hand it to the first live waiter (who connects in it), or count it
        free. Handing it over keeps ``open`` unchanged, so nobody else can take it meanwhile."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    async def warm(self, count: int) -> None:
        """Open up to ``count`` idle connections now (failures are logged, not raised)."""
        missing = min(count, self.limit) - self.open
        if missing <= 0:
            return
        results = await asyncio.gather(
            *(self.connect() for _ in range(missing)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Connection):
                self.put_back(result)

    def close(self) -> None:
        for conn in list(self._members):
            conn.close()
        self.idle.clear()


async def send(
    pool: Pool,
    method: str,
    target: bytes,
    headers: Mapping[str, str],
    body: Body | None,
    content_length: int | None,
) -> Response:
    """Send one request and return once the response headers are in. A request that fails on a
    reused connection before any byte of an answer is sent again once on a new connection, if
    its body can be sent again."""
    head = _head(method, target, pool.host_header, headers, body, content_length, pool.reuse)
    replayable = body is None or isinstance(body, bytes)
    conn, reused = await pool.acquire()
    while True:
        _response, ready = conn.begin(head_only=method == "HEAD")
        try:
            await _write(conn, head, body)
            return await _await_headers(conn, ready)
        except UpstreamError:
            conn.close()
            if not (reused and replayable and not conn.received):
                raise
            conn, reused = await pool.connect(), False
        except BaseException:
            conn.close()
            raise


async def _await_headers(conn: Connection, ready: asyncio.Future[Response]) -> Response:
    timer = conn.loop.call_later(conn.pool.read_timeout, _timeout_headers, ready)
    try:
        return await ready
    finally:
        timer.cancel()


def _timeout_headers(ready: asyncio.Future[Response]) -> None:
    if not ready.done():
        ready.set_exception(UpstreamTimeout())


async def _write(conn: Connection, head: bytes, body: Body | None) -> None:
    if conn.closed:
        raise UpstreamError("The upstream closed the connection.")
    if body is None or isinstance(body, bytes):
        conn.write(head + body if body else head)
        return
    conn.write(head)
    chunked = b"transfer-encoding: chunked" in head
    async for chunk in body:
        if not chunk:
            continue
        conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn.drain()
        if conn.closed:
            raise UpstreamError("The upstream closed the connection while receiving the body.")
    if chunked:
        conn.write(b"0\r\n\r\n")


def _head(
    method: str,
    target: bytes,
    host: bytes,
    headers: Mapping[str, str],
    body: Body | None,
    content_length: int | None,
    reuse: bool,
) -> bytes:
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for name, value in headers.items():
        parts += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
    if isinstance(body, bytes):
        parts.append(b"content-length: %d\r\n" % len(body))
    elif body is not None:
        if content_length is not None:
            parts.append(b"content-length: %d\r\n" % content_length)
        else:
            parts.append(b"transfer-encoding: chunked\r\n")
    if not reuse:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


__all__ = ["Body", "LLMProxyError", "Pool", "send"]
