"""A raw TCP upstream on loopback that records the exact bytes of every connection and parses
them with h11 (a parser we did not write), so a test sees what a real server would have seen."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import h11

OK_BODY = b'{"id":"x","object":"chat.completion","choices":[]}'


@dataclass
class Seen:
    """One request as h11 parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Connection:
    """Everything one connection carried: raw bytes, the requests h11 found, and the first
    protocol error if the bytes were not valid HTTP/1.1."""

    raw: bytearray = field(default_factory=bytearray)
    requests: list[Seen] = field(default_factory=list)
    error: str | None = None
    closed: bool = False


class RecordingUpstream:
    """Answers every request h11 accepts with ``response`` (raw bytes; a JSON 200 by default).
    ``hold`` (when set) makes it wait until released before answering."""

    def __init__(self, response: bytes | None = None) -> None:
        self.response = response or (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"x-request-id: req_upstream_0001\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
        )
        self.connections: list[Connection] = []
        self.hold: threading.Event | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> RecordingUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                for writer in list(self._writers):
                    writer.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def reset(self) -> None:
        """Forget what was seen; open connections stay (records kept, emptied)."""
        with self._lock:
            self.connections = [c for c in self.connections if not c.closed]
            for c in self.connections:
                c.raw.clear()
                c.requests.clear()

    def requests(self) -> list[Seen]:
        with self._lock:
            return [r for c in self.connections for r in c.requests]

    def errors(self) -> list[str]:
        with self._lock:
            return [c.error for c in self.connections if c.error]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = Connection()
        self._writers.add(writer)
        with self._lock:
            self.connections.append(record)
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        current: Seen | None = None
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    record.raw += data
                    parser.receive_data(data)
                    if not data:
                        break
                    continue
                if isinstance(event, h11.Request):
                    current = Seen(event.method, event.target, list(event.headers), b"")
                elif isinstance(event, h11.Data):
                    assert current is not None
                    current.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert current is not None
                    record.requests.append(current)
                    current = None
                    early = await self._answer(reader, writer)
                    if early is None:  # the client closed while we held the answer
                        break
                    record.raw += early
                    parser.receive_data(early)
                    parser.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    parser.send(h11.EndOfMessage())
                    parser.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except h11.RemoteProtocolError as exc:
            record.error = f"{exc} after {len(record.requests)} request(s)"
        except ConnectionError:
            pass
        finally:
            record.closed = True
            self._writers.discard(writer)
            writer.close()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """Send the answer (after ``hold`` if set); bytes that arrived meanwhile, or None if
        the client closed the connection first."""
        early = b""
        hold = self.hold
        while hold is not None and not hold.is_set():
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.05)
            except TimeoutError:
                continue
            if not data:
                return None
            early += data
        writer.write(self.response)
        await writer.drain()
        return early
