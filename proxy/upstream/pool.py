"""Keep-alive connection pools, one per upstream origin, and sending one request through them.

The only importer of ``connection``. A connection is reused only after a clean exchange and
while younger than the maximum age (so a long-lived pool re-resolves the upstream's DNS name).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.upstream import wire
from proxy.upstream.connection import Connection, Response
from proxy.upstream.egress import ProxyServer, open_tunnel
from shared.errors import Overloaded, UpstreamError, UpstreamTimeout

__all__ = ["Limits", "Pool", "Response", "send"]

log = logging.getLogger("llm_proxy.upstream")

IDLE_TIMEOUT = 60.0  # an idle connection older than this is closed rather than reused


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-pool bounds, from the settings."""

    connections: int
    acquire_timeout: float
    connect_timeout: float
    read_timeout: float
    max_header_bytes: int
    max_headers: int
    max_age: float  # seconds; 0: no limit
    reuse: bool = True


class Pool:
    """Connections to one ``scheme://host:port``: at most ``limit`` open, idle ones reused
    newest first, requests beyond the limit queued for ``acquire_timeout``. With an egress
    ``proxy``, http goes to the proxy in absolute form and https through a CONNECT tunnel."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        limits: Limits,
        ssl_context: ssl.SSLContext | None,
        proxy: ProxyServer | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.host_header = (host if port in (80, 443) else f"{host}:{port}").encode("idna")
        self.ssl = ssl_context if scheme == "https" else None
        self.proxy = proxy
        # http via a proxy: the request line names the origin; the proxy credentials ride along
        forward = proxy is not None and self.ssl is None
        self.target_prefix = b"http://" + self.host_header if forward else b""
        self.head_extra = proxy.authorization if forward and proxy is not None else b""
        self.limit = limits.connections
        self.acquire_timeout = limits.acquire_timeout
        self.connect_timeout = limits.connect_timeout
        self.read_timeout = limits.read_timeout or 1e9
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_age = limits.max_age or 1e18
        self.reuse = limits.reuse
        self.idle: deque[Connection] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._members: set[Connection] = set()

    def _young(self, conn: Connection) -> bool:
        return not conn.closed and conn.loop.time() - conn.born < self.max_age

    async def acquire(self) -> tuple[Connection, bool]:
        """A connection, and whether it was used before (then a failure before any answer may
        be the server having closed it while idle, and the request can be retried)."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < IDLE_TIMEOUT and self._young(conn):
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
        try:
            conn = await asyncio.wait_for(self._open(), self.connect_timeout)
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

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        hostname = self.host if self.ssl else None
        proxy = self.proxy
        if proxy is None:
            _, conn = await loop.create_connection(
                lambda: Connection(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=hostname,
            )
        elif self.ssl is None:
            _, conn = await loop.create_connection(lambda: Connection(self), proxy.host, proxy.port)
        else:
            sock = await open_tunnel(proxy, self.host, self.port)
            try:
                _, conn = await loop.create_connection(
                    lambda: Connection(self), sock=sock, ssl=self.ssl, server_hostname=hostname
                )
            except BaseException:
                sock.close()
                raise
        return conn

    def put_back(self, conn: Connection) -> None:
        if not self.reuse or not self._young(conn):
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
    body: wire.Body | None,
    content_length: int | None,
    marks: list[tuple[str, float]] | None = None,
) -> Response:
    """Send one request and return once the response headers are in (``marks``: profiling's
    phase marks, which get the moment a connection was in hand). A request that fails on a
    reused connection before any byte of an answer is sent again once on a new connection, if
    its body can be sent again. A header that cannot be sent raises ``InvalidHeader`` before
    any connection is taken."""
    frame = wire.framing(body, content_length)
    head = wire.head(
        method,
        pool.target_prefix + target,
        pool.host_header,
        headers,
        frame,
        close=not pool.reuse,
        extra=pool.head_extra,
    )
    replayable = body is None or isinstance(body, bytes)
    conn, reused = await pool.acquire()
    if marks is not None:
        marks.append(("upstream_connect", time.perf_counter()))
    while True:
        _response, ready = conn.begin(head_only=method == "HEAD")
        try:
            await _write(conn, head, body, frame)
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
    timer = conn.loop.call_later(conn.owner.read_timeout, _timeout_headers, ready)
    try:
        return await ready
    finally:
        timer.cancel()


def _timeout_headers(ready: asyncio.Future[Response]) -> None:
    if not ready.done():
        ready.set_exception(UpstreamTimeout())


async def _write(conn: Connection, head: bytes, body: wire.Body | None, frame: int) -> None:
    if conn.closed:
        raise UpstreamError("The upstream closed the connection.")
    if body is None or isinstance(body, bytes):
        conn.write(head + body if body else head)
        return
    conn.write(head)
    await wire.write_body(conn, body, frame)
