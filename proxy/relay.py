"""Forwarding one request upstream and relaying the answer back as it arrives.

The body streams to the client chunk by chunk (SSE included), while a bounded copy feeds the usage
parser and, for cacheable requests, the cache fill.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from proxy.body import ClientGone, StreamedBody
from proxy.cache import Fill, Served
from proxy.exchange import Exchange
from proxy.headers import response_headers, server_timing, upstream_headers
from proxy.upstream import Response, Upstream, read_chunk
from proxy.usage import SseUsage, inject_include_usage, usage_from_json
from shared.config import Settings
from shared.errors import LLMProxyError, error_body

_USAGE_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})
_JSON_CAPTURE = 1 << 20  # bytes of a JSON response kept to read its usage
_CONDITIONALS = frozenset({"if-none-match", "if-modified-since"})


class Relay:
    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.upstream = upstream
        self.chunk_size = settings.stream_response_chunk_size
        self.include_usage = settings.stream_include_usage
        self.forward_org = settings.forward_openai_org_headers

    async def forward(self, ex: Exchange, fill: Fill | None) -> None:
        route, cred, body = ex.route, ex.cred, ex.body
        assert route is not None and cred is not None
        query: bytes = ex.scope["query_string"]
        target = route.rest.encode() + b"?" + query if query else route.rest.encode()
        inject = False
        if isinstance(body, bytes):
            ex.request_bytes = len(body)
            if self.include_usage and ex.method == "POST" and route.endpoint in _USAGE_ENDPOINTS:
                changed = inject_include_usage(body)
                if changed is not None:
                    body, inject = changed, True
        headers = upstream_headers(
            ex.scope["headers"], cred.api_key, ex.request_id, forward_org=self.forward_org
        )
        if fill is not None and fill.conditional_headers:
            for name in _CONDITIONALS:
                headers.pop(name, None)
            for name_b, value_b in fill.conditional_headers:
                headers[name_b.decode("latin-1")] = value_b.decode("latin-1")
        sent_at = time.perf_counter()
        watch = _Watch()
        watcher = asyncio.create_task(_watch_disconnect(ex.receive, watch, body))
        try:
            try:
                response = await self.upstream.request(
                    ex.method,
                    cred.base_url,
                    target,
                    headers,
                    body,
                    body.length if isinstance(body, StreamedBody) else None,
                )
            except LLMProxyError:
                if isinstance(body, StreamedBody) and body.error is not None:
                    raise body.error from None  # our side failed, not the upstream
                raise
            finally:
                watch.task = None  # from here a disconnect closes the response instead
            watch.response = response
            try:
                if fill is not None and response.status == 304 and fill.revalidating:
                    served = await fill.not_modified(response.raw_headers)
                    ex.upstream_ms = (time.perf_counter() - sent_at) * 1000
                    await send_served(ex, served, fill.status)
                    return
                await self._relay(ex, response, sent_at, inject, fill, watch, watcher)
            finally:
                response.release()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if watch.gone and current is not None and current.uncancel() == 0:
                raise ClientGone() from None  # our own cancel: the client left mid-request
            raise
        finally:
            watcher.cancel()

    async def _relay(
        self,
        ex: Exchange,
        response: Response,
        sent_at: float,
        inject: bool,
        fill: Fill | None,
        watch: _Watch,
        watcher: asyncio.Task[None],
    ) -> None:
        headers_at = time.perf_counter()
        ex.status = response.status
        content_type = response.header(b"content-type") or b""
        is_sse = content_type.startswith(b"text/event-stream")
        ex.stream = is_sse
        sse = SseUsage(strip=inject) if is_sse else None
        capture: bytearray | None = bytearray() if not is_sse and b"json" in content_type else None
        out_headers = response_headers(response.raw_headers, keep_length=not (is_sse and inject))
        if fill is not None:
            out_headers.extend(fill.start(response.status, response.raw_headers))
        proxy_ms = (sent_at - ex.started + time.perf_counter() - headers_at) * 1000
        out_headers.append(
            (b"server-timing", server_timing(proxy_ms, (headers_at - sent_at) * 1000))
        )
        out_headers += ex.extra
        send = ex.send
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )
        ex.response_started = True
        sent = 0
        try:
            while True:
                try:
                    chunk = await read_chunk(response, self.chunk_size)
                except LLMProxyError as exc:
                    if watch.gone:
                        raise ClientGone() from None
                    ex.error = exc.code
                    if sse is not None:  # tell an SSE client in its own framing
                        chunk = b"data: " + orjson.dumps(error_body(exc)) + b"\n\n"
                        await send(
                            {"type": "http.response.body", "body": chunk, "more_body": False}
                        )
                    # else: return without finishing; the server closes the connection and
                    # the client sees a truncated body (its Content-Length is not met)
                    return
                if not chunk:
                    break
                if not sent:
                    ex.ttfb_ms = (time.perf_counter() - ex.started) * 1000
                if sse is not None:
                    chunk = sse.feed(chunk)
                elif capture is not None and len(capture) < _JSON_CAPTURE:
                    capture += chunk
                if chunk:
                    sent += len(chunk)
                    if fill is not None:
                        fill.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if watch.gone:
                    raise ClientGone()
            tail = sse.finish() if sse is not None else b""
            if tail:
                sent += len(tail)
                if fill is not None:
                    fill.feed(tail)
            watcher.cancel()  # before the last send: a finished response is not a disconnect
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            if fill is not None:
                await fill.finish()  # only a complete body is stored
        finally:
            ex.response_bytes = sent
            ex.upstream_ms = (time.perf_counter() - sent_at) * 1000
            if sse is not None:
                ex.usage = sse.usage
            elif capture is not None and len(capture) < _JSON_CAPTURE:
                ex.usage = usage_from_json(bytes(capture))


async def send_served(ex: Exchange, served: Served, cache_status: str) -> None:
    """Answer from the cache (a hit, a collapsed miss, or a refreshed revalidation)."""
    ex.status = served.status
    ex.stream = served.stream
    ex.cache_status = cache_status
    ex.response_bytes = len(served.body)
    await ex.send(
        {
            "type": "http.response.start",
            "status": served.status,
            "headers": served.headers + ex.extra,
        }
    )
    ex.response_started = True
    ex.ttfb_ms = (time.perf_counter() - ex.started) * 1000
    await ex.send({"type": "http.response.body", "body": served.body, "more_body": False})


class _Watch:
    """What a disconnect must stop: the request task while it waits for the upstream's
    headers, then the response being relayed."""

    __slots__ = ("gone", "response", "task")

    def __init__(self) -> None:
        self.gone = False
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self.response: Response | None = None


async def _watch_disconnect(receive: Any, watch: _Watch, body: object) -> None:
    """Wait for the client to go away, from the moment its body has been read; then stop the
    upstream exchange at once (its connection is closed, the pool slot freed), so the upstream
    stops generating (and billing) for nobody."""
    if isinstance(body, StreamedBody):
        await body.finished.wait()  # until then the body's own reads see a disconnect
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            watch.gone = True
            if watch.response is not None:
                watch.response.close()
            elif watch.task is not None:
                watch.task.cancel()
            return
