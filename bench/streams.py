"""Streaming load driver: SSE time to first event, time to last, largest gap between frames.

wrk sees a stream as one long response, so streams are driven here: an asyncio client (uvloop,
httptools) that timestamps every SSE event as its bytes arrive. Two modes, JSON on stdout:

  load   CONCURRENCY keep-alive connections each sending stream requests back to back for
         DURATION seconds: percentiles of time-to-first-event, time-to-last and the largest gap.
  burst  N streams opened at the same moment, one each; a stream "stalls" if any gap between two
         frames exceeds --stall-ms, or it errors or ends early. Reports how many stalled.

Run: python -m bench.streams load --url http://127.0.0.1:9100/v1/chat/completions -c 16 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httptools
import orjson

T = TypeVar("T")

DEFAULT_BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Count to twenty."}],
    }
)


@dataclass
class Stream:
    """Timings of one streamed response, in seconds from the moment the request was written."""

    status: int = 0
    first_byte: float = 0.0  # response headers arrived
    first_event: float = 0.0  # first complete SSE event arrived
    last_event: float = 0.0
    events: int = 0
    max_gap: float = 0.0
    done: bool = False  # saw data: [DONE] and the end of the response
    error: str = ""


class Client(asyncio.Protocol):
    """One keep-alive connection that runs one stream request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.stream = Stream()
        self.started = 0.0
        self.carry = b""
        self.saw_done = False
        self.finished: asyncio.Future[Stream] | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.keep_alive = False
        if self.finished is not None and not self.finished.done():
            self.stream.error = f"connection lost: {exc or 'closed by server'}"
            self.finished.set_result(self.stream)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.stream.error = f"bad HTTP: {exc}"
            if self.transport is not None:
                self.transport.close()

    def on_headers_complete(self) -> None:
        self.stream.status = self.parser.get_status_code()
        self.stream.first_byte = time.perf_counter() - self.started

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter() - self.started
        text = self.carry + body
        complete = text.count(b"\n\n")
        if not complete:
            self.carry = text
            return
        cut = text.rfind(b"\n\n") + 2
        if b"data: [DONE]" in text[:cut]:
            self.saw_done = True
        self.carry = text[cut:]
        s = self.stream
        if s.events == 0:
            s.first_event = now
        else:
            s.max_gap = max(s.max_gap, now - s.last_event)
        s.last_event = now
        s.events += complete

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.stream.done = self.saw_done
        if not self.saw_done and not self.stream.error:
            self.stream.error = f"status {self.stream.status}, ended without data: [DONE]"
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(self.stream)

    async def run(self, request: bytes) -> Stream:
        self.stream, self.carry, self.saw_done = Stream(), b"", False
        self.finished = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)
        return await self.finished


def build_request(url: str, body: bytes, auth: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        "accept: text/event-stream",
        f"content-length: {len(body)}",
    ]
    if auth:
        lines.append(f"authorization: {auth}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connect(host: str, port: int) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(Client, host, port)
    return client


async def one(host: str, port: int, request: bytes, client: Client | None) -> tuple[Stream, Client]:
    try:
        if client is None or client.transport is None or not client.keep_alive:
            client = await connect(host, port)
        return await client.run(request), client
    except OSError as exc:
        return Stream(error=f"connect: {exc}"), None  # type: ignore[return-value]


@dataclass
class Summary:
    streams: int = 0
    errors: int = 0
    stalled: int = 0
    streams_per_s: float = 0.0
    events: int = 0
    ttfb_ms: dict[str, float] = field(default_factory=dict)  # time to first SSE event
    headers_ms: dict[str, float] = field(default_factory=dict)  # time to response headers
    total_ms: dict[str, float] = field(default_factory=dict)  # time to the last event
    max_gap_ms: dict[str, float] = field(default_factory=dict)  # per-stream largest gap
    first_error: str = ""


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": round(pick(0.50) * 1000, 3),
        "p90": round(pick(0.90) * 1000, 3),
        "p99": round(pick(0.99) * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


def summarize(results: list[Stream], elapsed: float, stall_s: float) -> Summary:
    good = [s for s in results if not s.error]
    errors = [s for s in results if s.error]
    return Summary(
        streams=len(results),
        errors=len(errors),
        stalled=len(errors) + sum(1 for s in good if s.max_gap > stall_s),
        streams_per_s=round(len(good) / elapsed, 1) if elapsed else 0.0,
        events=sum(s.events for s in good),
        ttfb_ms=percentiles([s.first_event for s in good]),
        headers_ms=percentiles([s.first_byte for s in good]),
        total_ms=percentiles([s.last_event for s in good]),
        max_gap_ms=percentiles([s.max_gap for s in good]),
        first_error=errors[0].error if errors else "",
    )


async def load(
    url: str, concurrency: int, duration: float, body: bytes, auth: str, stall_s: float
) -> Summary:
    host, port, request = build_request(url, body, auth)
    results: list[Stream] = []
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        client: Client | None = None
        while time.perf_counter() < deadline:
            stream, client = await one(host, port, request, client)
            results.append(stream)
            if stream.error:
                client = None
                await asyncio.sleep(0.01)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(results, time.perf_counter() - started, stall_s)


async def burst(url: str, n: int, body: bytes, auth: str, stall_s: float) -> Summary:
    """Open n connections first, then start all n streams at once."""
    host, port, request = build_request(url, body, auth)
    clients = await asyncio.gather(*(connect(host, port) for _ in range(n)), return_exceptions=True)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(c.run(request) if isinstance(c, Client) else _failed(c) for c in clients)
    )
    elapsed = time.perf_counter() - started
    for c in clients:
        if isinstance(c, Client) and c.transport is not None:
            c.transport.close()
    return summarize(list(results), elapsed, stall_s)


async def _failed(exc: BaseException) -> Stream:
    return Stream(error=f"connect: {exc}")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("load", "burst"))
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="load: connections")
    parser.add_argument("-n", "--streams", type=int, default=64, help="burst: streams at once")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="load: seconds")
    parser.add_argument("--auth", default="", help="Authorization header value")
    parser.add_argument("--body-file", help="request body (default: a small streaming chat)")
    parser.add_argument("--stall-ms", type=float, default=500.0, help="gap that counts as a stall")
    args = parser.parse_args(argv)
    body = open(args.body_file, "rb").read() if args.body_file else DEFAULT_BODY  # noqa: SIM115
    stall = args.stall_ms / 1000
    if args.mode == "load":
        summary = run_loop(load(args.url, args.concurrency, args.duration, body, args.auth, stall))
    else:
        summary = run_loop(burst(args.url, args.streams, body, args.auth, stall))
    sys.stdout.write(orjson.dumps(asdict(summary)).decode() + "\n")


if __name__ == "__main__":
    main()
