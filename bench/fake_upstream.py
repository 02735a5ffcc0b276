"""A fast fake OpenAI upstream: raw asyncio protocol, httptools parser, uvloop, SO_REUSEPORT.

Run: python bench/fake_upstream.py --port 9100 --workers 2 --chunks 20 --chunk-delay-ms 50

Endpoints: POST /v1/chat/completions (JSON, or an SSE stream with "stream": true),
POST /v1/embeddings, GET /v1/models. Everything else is an OpenAI-style 404/405.
Responses are prebuilt bytes so a request costs one parse and one write; see docs/performance.md
for its measured capacity (it must stay well above anything we put in front of it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httptools
import orjson

T = TypeVar("T")

CREATED = 1_700_000_000
MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class Config:
    chunks: int = 20
    chunk_delay: float = 0.0  # seconds between SSE frames; the first frame goes out at once
    embedding_dims: int = 1536


def _response(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: ",
            content_type,
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n\r\n",
            body,
        )
    )


def _error(status: bytes, message: str, code: str) -> bytes:
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    )
    return _response(status, body)


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: object) -> bytes:
    return _chunked(b"data: " + orjson.dumps(obj) + b"\n\n")


class Responses:
    """Every reply prebuilt once per process, so serving costs no JSON encoding."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.models = _response(
            b"200 OK",
            orjson.dumps(
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"}
                        for m in (MODEL, "gpt-4o", "text-embedding-3-small")
                    ],
                }
            ),
        )
        # The chat body is split around the prompt token count, which follows the request size.
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 999999999, "completion_tokens": 7, "total_tokens": 0},
        }
        text = orjson.dumps(completion)
        head, _, tail = text.partition(b"999999999")
        self.chat_head, self.chat_tail = (
            head,
            tail.replace(b'"total_tokens":0', b'"total_tokens":%d'),
        )
        vector = [round(((i * 7919) % 2000) / 1000 - 1, 6) for i in range(config.embedding_dims)]
        self.vector = vector
        self.embeddings_float = self._embeddings(vector)
        packed = struct.pack(f"<{len(vector)}f", *vector)
        self.embeddings_base64 = self._embeddings(base64.b64encode(packed).decode())
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.stream_frames = self._stream_frames(config.chunks)
        self.stream_usage = _sse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "choices": [],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": config.chunks,
                    "total_tokens": 10 + config.chunks,
                },
            }
        )
        self.stream_done = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.not_found = _error(b"404 Not Found", "Unknown path", "not_found")
        self.not_allowed = _error(b"405 Method Not Allowed", "Method not allowed", "bad_method")
        self.bad_json = _error(b"400 Bad Request", "Body is not valid JSON", "invalid_json")

    def chat(self, body: bytes) -> bytes:
        prompt = max(1, len(body) // 4)
        payload = self.chat_head + b"%d" % prompt + self.chat_tail % (prompt + 7)
        return _response(b"200 OK", payload)

    def _embeddings(self, embedding: object, count: int = 1) -> bytes:
        return _response(
            b"200 OK",
            orjson.dumps(
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": embedding}
                        for i in range(count)
                    ],
                    "model": "text-embedding-3-small",
                    "usage": {"prompt_tokens": 8 * count, "total_tokens": 8 * count},
                }
            ),
        )

    def embeddings_of(self, body: bytes) -> bytes:
        """One embedding per input; the precomputed answer when there is one input."""
        if b'"base64"' in body:
            return self.embeddings_base64
        if b"[" not in body:
            return self.embeddings_float
        try:
            inputs = orjson.loads(body).get("input")
        except (orjson.JSONDecodeError, AttributeError):
            return self.bad_json
        if not isinstance(inputs, list) or len(inputs) < 2 or isinstance(inputs[0], int):
            return self.embeddings_float
        return self._embeddings(self.vector, len(inputs))

    @staticmethod
    def _stream_frames(n: int) -> list[bytes]:
        frames = []
        for i in range(n):
            delta: dict[str, str] = {"content": f"tok{i} "}
            if i == 0:
                delta["role"] = "assistant"
            frames.append(
                _sse(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": CREATED,
                        "model": MODEL,
                        "choices": [
                            {
                                "index": 0,
                                "delta": delta,
                                "finish_reason": "stop" if i == n - 1 else None,
                            }
                        ],
                    }
                )
            )
        return frames


class Upstream(asyncio.Protocol):
    """One client connection: parse requests, answer them in order (HTTP/1.1 keep-alive)."""

    __slots__ = ("body", "busy", "parser", "pending", "responses", "task", "transport", "url")

    def __init__(self, responses: Responses) -> None:
        self.responses = responses
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.task: asyncio.Future[None] | None = None
        self.busy = False  # a stream is being written; later pipelined requests wait their turn
        self.pending: deque[tuple[bytes, bytes, bytes, bool]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_error(b"400 Bad Request", "Malformed HTTP", "bad_http"))
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        request = (self.parser.get_method(), self.url, body, self.parser.should_keep_alive())
        self.url, self.body = b"", []
        if self.busy:
            self.pending.append(request)
        else:
            self.handle(*request)

    def handle(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        r = self.responses
        path = url.partition(b"?")[0]
        if path == b"/v1/chat/completions":
            if method != b"POST":
                reply = r.not_allowed
            elif b'"stream"' in body:
                try:
                    request = orjson.loads(body)
                except orjson.JSONDecodeError:
                    reply = r.bad_json
                else:
                    if request.get("stream"):
                        options = request.get("stream_options") or {}
                        self.busy = True
                        self.task = asyncio.ensure_future(
                            self.stream(bool(options.get("include_usage")), keep_alive)
                        )
                        return
                    reply = r.chat(body)
            else:
                reply = r.chat(body)
        elif path == b"/v1/models":
            reply = r.models if method == b"GET" else r.not_allowed
        elif path == b"/v1/embeddings":
            reply = r.not_allowed if method != b"POST" else r.embeddings_of(body)
        else:
            reply = r.not_found
        transport.write(reply)
        if not keep_alive:
            transport.close()

    async def stream(self, include_usage: bool, keep_alive: bool) -> None:
        r = self.responses
        delay = r.config.chunk_delay
        frames = r.stream_frames
        tail = (r.stream_usage + r.stream_done) if include_usage else r.stream_done
        if delay <= 0:
            self._write(r.stream_head + b"".join(frames) + tail)
        else:
            self._write(r.stream_head + frames[0])
            for frame in frames[1:]:
                await asyncio.sleep(delay)
                if self.transport is None:
                    return
                self._write(frame)
            await asyncio.sleep(delay)
            self._write(tail)
        self.finish_stream(keep_alive)

    def finish_stream(self, keep_alive: bool) -> None:
        """A stream is written: close, or answer the requests pipelined behind it."""
        self.busy = False
        if not keep_alive and self.transport is not None:
            self.transport.close()
            return
        while self.pending and not self.busy:
            self.handle(*self.pending.popleft())

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


def listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


#: Builds, in each worker process, what makes one protocol per accepted connection.
Protocols = Callable[[Config], Callable[[], asyncio.Protocol]]


def openai_protocols(config: Config) -> Callable[[], asyncio.Protocol]:
    responses = Responses(config)
    return lambda: Upstream(responses)


def serve(
    host: str,
    port: int,
    config: Config,
    ready_fd: int | None = None,
    protocols: Protocols = openai_protocols,
) -> None:
    """Run one worker process until SIGTERM/SIGINT."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            protocols(config), sock=listen_socket(host, port), backlog=4096
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        async with server:
            await stop.wait()

    run_loop(main())


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket so workers can share a port picked by the kernel."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


def run(
    host: str, port: int, workers: int, config: Config, protocols: Protocols = openai_protocols
) -> None:
    """Fork the workers, print the URL once all listen, and forward SIGTERM/SIGINT to them."""
    reservation, port = reserve_port(host, port)
    children = []
    read_fd, write_fd = os.pipe()
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            reservation.close()
            code = 0
            try:
                serve(host, port, config, write_fd, protocols)
            except BaseException:
                code = 1
                raise
            finally:
                os._exit(code)
        children.append(pid)
    os.close(write_fd)
    started = 0
    while started < workers:
        got = os.read(read_fd, workers)
        if not got:
            break
        started += len(got)
    os.close(read_fd)
    reservation.close()
    if started < workers:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        sys.exit("fake upstream: a worker failed to start")

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(f"fake upstream listening on http://{host}:{port} ({workers} workers)", flush=True)
    for pid in children:
        os.waitpid(pid, 0)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port (printed)")
    parser.add_argument("--workers", type=int, default=2, help="processes sharing the port")
    parser.add_argument("--chunks", type=int, default=20, help="SSE content frames per stream")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="pause between SSE frames"
    )
    parser.add_argument("--embedding-dims", type=int, default=1536)
    args = parser.parse_args(argv)
    config = Config(args.chunks, args.chunk_delay_ms / 1000, args.embedding_dims)
    run(args.host, args.port, max(1, args.workers), config)


if __name__ == "__main__":
    main()
