"""The proxy port's HTTP/1.1 protocol: uvicorn's httptools protocol with request-head limits,
a head timeout, and the JSON error envelope for what the server itself refuses."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from proxy import disconnect, overhead
from proxy.coalesce import CoalescingTransport
from shared.config import Settings
from shared.errors import (
    HeadersTooLarge,
    HeadTimeout,
    LLMProxyError,
    MalformedRequest,
    error_body,
)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int
    max_count: int
    timeout: float  # seconds; 0 disables

    @classmethod
    def of(cls, settings: Settings) -> HeadLimits:
        return cls(
            settings.max_request_header_bytes,
            settings.max_request_headers,
            settings.request_header_timeout,
        )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is on the protocol."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """What it adds to uvicorn, and why it is cheap:

    - Head size: bytes received while a head is unfinished are counted per ``data_received``
      (one addition per read, not per header); past ``max_bytes`` the request gets 431. So a
      client can make a worker buffer at most ``max_bytes`` plus one socket read.
    - Header count: checked once, in ``on_headers_complete`` (``len`` of the list uvicorn
      built anyway).
    - Head timeout: one timer per connection, re-armed only when it fires; a request start
      costs a clock read. A connection that has not completed its head ``timeout`` after it
      connected (or after its request began) gets 408 (or, if it sent nothing, is just closed).
      Idle keep-alive between requests stays uvicorn's ``timeout_keep_alive``.
    - Disconnects: a lost connection is told to the request's watch (proxy/disconnect.py),
      so no request needs a task of its own waiting on ``receive`` for it.
    - Writes go through ``CoalescingTransport`` (proxy/coalesce.py): a response's head and
      body leave in one write.
    - Errors uvicorn answers itself in text/plain (malformed HTTP) get our envelope instead.
    - Arrival: the clock is read once per socket read, before parsing; the read that begins a
      request puts its moment in the request's scope (proxy/overhead.py), so the proxy's own
      figures start when the request's first bytes reached the worker. Time writing is paused
      by flow control (a client not reading) is added up in the scope too: it is the client's
      time, not the proxy's. Nothing is done while writing is not paused.
    """

    limits: ClassVar[HeadLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._head_since = 0.0
        self._head_watch: asyncio.TimerHandle | None = None
        self._refusal: LLMProxyError | None = None
        self._read_at = 0.0
        self._paused_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn (and everything here) writes through it: a response's head and body leave
        # in one write (proxy/coalesce.py)
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        self._head_since = self.loop.time()
        if self.limits.timeout > 0:
            self._head_watch = self.loop.call_later(self.limits.timeout, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_watch is not None:
            self._head_watch.cancel()
            self._head_watch = None
        super().connection_lost(exc)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            disconnect.lost(cycle.scope["state"])

    def data_received(self, data: bytes) -> None:
        self._read_at = time.perf_counter()  # before parsing: on_message_begin may need it
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._reading_head
            and self._head_bytes > self.limits.max_bytes
            and not self.transport.is_closing()
        ):
            self._refuse(HeadersTooLarge())

    def on_message_begin(self) -> None:
        if not self._reading_head:  # a later request on this connection: its own deadline
            self._reading_head = True
            self._head_bytes = 0
            self._head_since = self.loop.time()
        super().on_message_begin()
        state = self.scope["state"]
        state[overhead.KEY] = self._read_at
        state[disconnect.HOOK_KEY] = None  # this server tells a request's watch itself

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # A large body pauses reading until the app asks for more; once it is all in, reading
        # goes on, so a client that leaves is seen (uvicorn's ``receive`` would do the same).
        self.flow.resume_reading()

    def pause_writing(self) -> None:
        self._paused_at = time.perf_counter()
        super().pause_writing()

    def resume_writing(self) -> None:
        if self._paused_at and self.scope is not None:
            state = self.scope["state"]
            paused = time.perf_counter() - self._paused_at
            state[overhead.PAUSED_KEY] = state.get(overhead.PAUSED_KEY, 0.0) + paused
        self._paused_at = 0.0
        super().resume_writing()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        limits = self.limits
        # the exact size is worked out only when the reads could have exceeded it
        if len(self.headers) > limits.max_count or (
            self._head_bytes > limits.max_bytes
            and _head_size(self.url, self.headers) > limits.max_bytes
        ):
            self._refusal = HeadersTooLarge()
            raise _Refused
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's reply to anything its parser refused (our callbacks' refusals included)."""
        cycle = self.cycle
        if not self._reading_head and cycle is not None and cycle.response_started:
            self.transport.close()  # a body broke mid-response: nothing can be slipped in
            return
        self._refuse(self._refusal or MalformedRequest())

    def _check_head(self) -> None:
        self._head_watch = None
        if self.transport.is_closing():
            return
        timeout = self.limits.timeout
        waited = self.loop.time() - self._head_since
        if self._reading_head and waited >= timeout:
            if self._head_bytes:
                self._refuse(HeadTimeout())
            else:
                self.transport.close()  # nothing sent (a preconnect, or a slowloris): no reply
            return
        delay = timeout - waited if self._reading_head else timeout
        self._head_watch = self.loop.call_later(delay, self._check_head)

    def _refuse(self, error: LLMProxyError) -> None:
        body = orjson.dumps(error_body(error))
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def protocol_class(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn should build connections with, carrying these limits."""
    return type(
        "ProxyHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": HeadLimits.of(settings)}
    )
