"""A lean HTTP/1.1 load client for tests: keep-alive connections on uvloop, httptools parsing,
requests prebuilt as bytes, so a hundred thousand requests cost the machine seconds, not
minutes. A request marked ``hang_up`` closes its connection as soon as the first bytes of the
response body arrive (a real disconnect mid-stream) and the next request opens a new one."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools


@dataclass(frozen=True, slots=True)
class Call:
    kind: str  # the test's own label, counted per outcome
    raw: bytes  # the whole request: request line, headers, body
    hang_up: bool = False


def post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A POST's bytes (Host, Content-Type and Content-Length added)."""
    lines = [f"POST {path} HTTP/1.1", "Host: proxy", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Tally:
    """What came back: (kind, status) counts, cache hits per kind, and failures."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    cache_hits: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


class _Reply(asyncio.Protocol):
    """One connection; one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.first_body: asyncio.Future[None] | None = None
        self.cache = b""
        self.closed = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.done, self.first_body = loop.create_future(), loop.create_future()
        self.cache = b""

    def forget(self) -> None:
        """Drop what this response still promises (a stream left early never completes)."""
        for future in (self.first_body, self.done):
            if future is not None:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: a closed connection is expected here
                future.cancel()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in (self.first_body, self.done):
            if future is not None and not future.done():
                future.set_exception(ConnectionError("the connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-proxy-cache":
            self.cache = value

    def on_body(self, body: bytes) -> None:
        if self.first_body is not None and not self.first_body.done():
            self.first_body.set_result(None)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


async def drive(host: str, port: int, calls: Sequence[Call], connections: int) -> Tally:
    """Send every call over ``connections`` keep-alive connections, each taking the next call
    when its last one is answered."""
    tally = Tally()
    queue = iter(calls)
    loop = asyncio.get_running_loop()

    async def connect() -> _Reply:
        _, conn = await loop.create_connection(_Reply, host, port)
        return conn

    async def worker() -> None:
        conn: _Reply | None = None
        for call in queue:
            if conn is None or conn.closed:
                conn = await connect()
            conn.start()
            assert conn.transport is not None and conn.done and conn.first_body
            conn.transport.write(call.raw)
            try:
                await asyncio.wait_for(conn.first_body if call.hang_up else conn.done, 60)
            except (ConnectionError, httptools.HttpParserError, TimeoutError) as exc:
                tally.failures.append(f"{call.kind}: {exc!r}")
                call = Call(call.kind, b"", hang_up=True)  # drop this connection
            else:
                tally.statuses[(call.kind, conn.parser.get_status_code())] += 1
                tally.cache_hits[call.kind] += conn.cache == b"hit"
            conn.forget()
            if call.hang_up or not conn.parser.should_keep_alive():
                conn.transport.close()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally
