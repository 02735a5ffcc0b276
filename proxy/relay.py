"""Forwarding one request upstream and relaying the answer back as it arrives.

The body streams to the client chunk by chunk (SSE included), while a bounded copy feeds the usage
parser and, for cacheable requests, the cache fill.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from proxy.body import ClientGone, StreamedBody
from proxy.cache import Fill, Served
from proxy.disconnect import DisconnectWatch
from proxy.exchange import Exchange
from proxy.failover import AFFINITY_HEADER, Failover
from proxy.headers import response_headers, upstream_headers
from proxy.overhead import head_timing
from proxy.routing import Route
from proxy.upstream import Response, Upstream, read_chunk
from proxy.upstream.failover import Target
from proxy.upstream.providers import (
    Deployments,
    Provider,
    anthropic_error_body,
    azure_target,
)
from proxy.usage import (
    INCLUDE_USAGE_ENDPOINTS,
    JsonTap,
    Usage,
    bills_tokens,
    estimate,
    estimate_completion_tokens,
    inject_include_usage,
)
from proxy.usage_anthropic import AnthropicSseUsage
from proxy.usage_stream import SseUsage
from shared.config import Settings
from shared.errors import LLMProxyError, error_body
from shared.kinds import ANTHROPIC

_CONDITIONALS = frozenset({"if-none-match", "if-modified-since"})


class Relay:
    def __init__(
        self, settings: Settings, upstream: Upstream, failover: Failover | None = None
    ) -> None:
        self.upstream = upstream
        self.failover = failover
        self.affinity = settings.upstream_affinity
        self.chunk_size = settings.stream_response_chunk_size
        self.include_usage = settings.stream_include_usage
        self.forward_org = settings.forward_openai_org_headers
        self.azure_api_version = settings.azure_openai_api_version

    async def forward(self, ex: Exchange, fill: Fill | None) -> None:
        route, cred, body = ex.route, ex.cred, ex.body
        assert route is not None and cred is not None
        query: bytes = ex.scope["query_string"]
        inject = False
        if isinstance(body, bytes):
            ex.request_bytes = len(body)
            if (
                self.include_usage
                and ex.method == "POST"
                and route.endpoint in INCLUDE_USAGE_ENDPOINTS
            ):
                changed = inject_include_usage(body)
                if changed is not None:
                    body, inject = changed, True
        conditional = fill.conditional_headers if fill is not None else None
        upstreams = cred.upstreams
        serving: Target | None = None
        if not upstreams:  # the one-upstream path: the project's own base URL and key
            provider = cred.provider
            target = self._target(provider, cred.deployments, route, query, body)
            headers = self._headers(ex, provider, cred.api_key, conditional)
        sent_at = time.perf_counter()
        watch = DisconnectWatch(ex.scope, ex.receive, body)
        try:
            try:
                if not upstreams:
                    ex.attempts = 1
                    response = await self.upstream.request(
                        ex.method,
                        cred.base_url,
                        target,
                        headers,
                        body,
                        body.length if isinstance(body, StreamedBody) else None,
                        ex.marks,
                    )
                else:
                    assert self.failover is not None

                    def call(t: Target) -> tuple[bytes, dict[str, str]]:
                        return (
                            self._target(t.provider, t.deployments, route, query, body),
                            self._headers(ex, t.provider, t.api_key, conditional),
                        )

                    response, serving = await self.failover.request(
                        ex, upstreams, self._affinity_key(ex), call, body
                    )
                    provider = serving.provider
            except LLMProxyError:
                if isinstance(body, StreamedBody) and body.error is not None:
                    raise body.error from None  # our side failed, not the upstream
                raise
            finally:
                watch.task = None  # from here a disconnect closes the response instead
            watch.response = response
            if ex.marks is not None:
                ex.marks.append(("upstream_first_byte", time.perf_counter()))
            try:
                if fill is not None and response.status == 304 and fill.revalidating:
                    served = await fill.not_modified(response.raw_headers)
                    ex.upstream_ms = (time.perf_counter() - sent_at) * 1000
                    await send_served(ex, served, fill.status)
                    return
                await self._relay(ex, response, sent_at, inject, fill, watch, provider, serving)
            finally:
                response.release()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if watch.gone and current is not None and current.uncancel() == 0:
                raise ClientGone() from None  # our own cancel: the client left mid-request
            raise
        finally:
            watch.stop()

    def _target(
        self, provider: Provider, table: Deployments, route: Route, query: bytes, body: object
    ) -> bytes:
        """The path and query below the upstream's base URL."""
        if provider.maps_paths:
            return azure_target(
                route.rest, route.deployment, query, body, table, self.azure_api_version
            )
        return route.rest.encode() + b"?" + query if query else route.rest.encode()

    def _headers(
        self,
        ex: Exchange,
        provider: Provider,
        api_key: str,
        conditional: tuple[tuple[bytes, bytes], ...] | None,
    ) -> dict[str, str]:
        headers = upstream_headers(
            ex.scope["headers"], provider, api_key, ex.request_id, forward_org=self.forward_org
        )
        if conditional:
            for name in _CONDITIONALS:
                headers.pop(name, None)
            for name_b, value_b in conditional:
                headers[name_b.decode("latin-1")] = value_b.decode("latin-1")
        if ex.trace is not None:  # traceparent for this attempt
            ex.trace.upstream(ex, headers)
        return headers

    def _affinity_key(self, ex: Exchange) -> str | None:
        """What keeps one conversation on one upstream (UPSTREAM_AFFINITY), or None."""
        if self.affinity == "token":
            return ex.cred.token_id if ex.cred is not None else None
        if self.affinity == "header":
            for name, value in ex.scope["headers"]:
                if name == AFFINITY_HEADER:
                    key: bytes = value
                    return key.decode("latin-1")
        return None

    async def _relay(
        self,
        ex: Exchange,
        response: Response,
        sent_at: float,
        inject: bool,
        fill: Fill | None,
        watch: DisconnectWatch,
        provider: Provider,
        serving: Target | None,
    ) -> None:
        headers_at = response.head_at or time.perf_counter()
        ex.status = response.status
        content_type = response.header(b"content-type") or b""
        is_sse = content_type.startswith(b"text/event-stream")
        ex.stream = is_sse
        sse: SseUsage | AnthropicSseUsage | None = None
        if is_sse:
            anthropic = provider.kind == ANTHROPIC
            sse = (
                AnthropicSseUsage()
                if anthropic
                else SseUsage(strip=inject, max_write=self.chunk_size)
            )
        tap = JsonTap() if not is_sse and b"json" in content_type else None
        keep_length = not (is_sse and inject)
        out_headers = response_headers(response.raw_headers, keep_length=keep_length)
        # A fill is stored before the client can have the whole answer (docs/caching.md): with
        # a Content-Length that is before the chunk that completes it, else before the end.
        complete_at = -1
        if fill is not None:
            out_headers.extend(fill.start(response.status, response.raw_headers))
            length = response.header(b"content-length") if keep_length else None
            if length is not None and length.isdigit():
                complete_at = int(length)
        out_headers.append((b"server-timing", head_timing(ex, (headers_at - sent_at) * 1000)))
        out_headers += ex.extra
        send = ex.send
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )
        ex.response_started = True
        sent = 0
        waited = 0.0  # on the upstream's body (seconds): not the proxy's time
        try:
            while True:
                try:
                    reading = time.perf_counter()
                    chunk = await read_chunk(response, self.chunk_size)
                    waited += time.perf_counter() - reading
                except LLMProxyError as exc:
                    if watch.gone:
                        raise ClientGone() from None
                    ex.error = exc.code
                    if serving is not None and self.failover is not None:
                        await self.failover.failed_mid_stream(serving)
                    if isinstance(sse, AnthropicSseUsage):  # tell an SSE client in its framing
                        chunk = b"event: error\ndata: " + orjson.dumps(anthropic_error_body(exc))
                        chunk += b"\n\n"
                        await send(
                            {"type": "http.response.body", "body": chunk, "more_body": False}
                        )
                    elif sse is not None:
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
                    for piece in sse.feed(chunk):
                        sent += len(piece)
                        if fill is not None:
                            fill.feed(piece)
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                else:
                    if tap is not None:
                        tap.feed(chunk)
                    sent += len(chunk)
                    if fill is not None:
                        fill.feed(chunk)
                        if sent == complete_at:
                            await fill.finish()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if watch.gone:
                    raise ClientGone()
            rest = sse.finish() if sse is not None else []
            last = rest.pop() if rest else b""
            for piece in (*rest, last):
                sent += len(piece)
                if fill is not None:
                    fill.feed(piece)
            for piece in rest:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            if fill is not None:
                await fill.finish()  # only a complete body is stored; a no-op if already done
            watch.stop()  # before the last send: a finished response is not a disconnect
            await send({"type": "http.response.body", "body": last, "more_body": False})
            ex.written_at = time.perf_counter()
        finally:
            ex.response_bytes = sent
            ex.body_wait_ms = waited * 1000
            if ex.marks is not None:
                ex.marks.append(("stream", time.perf_counter()))
            ex.upstream_ms = (time.perf_counter() - sent_at) * 1000
            ex.usage = _usage(ex, sse, tap)


def _usage(
    ex: Exchange, sse: SseUsage | AnthropicSseUsage | None, tap: JsonTap | None
) -> Usage | None:
    """What the answer reported; for a usage endpoint's success that reported nothing (cut
    short, or an upstream that does not count), an estimate flagged as one — never a silent 0."""
    usage = sse.result() if sse is not None else tap.usage() if tap is not None else None
    if usage is not None and usage.found:
        return usage
    route = ex.route
    if route is None or not bills_tokens(ex.method, route.endpoint, route.rest):
        return usage
    if not 200 <= ex.status < 300:
        return usage
    request = ex.body if isinstance(ex.body, bytes) else None
    if sse is not None:
        completion = sse.deltas
    else:
        whole = tap.whole() if tap is not None else None
        completion = estimate_completion_tokens(whole) if whole else 0
    return estimate(usage or Usage(), request, completion)


async def send_served(ex: Exchange, served: Served, cache_status: str) -> None:
    """Answer from the cache (a hit, a collapsed miss, or a refreshed revalidation)."""
    ex.status = served.status
    ex.stream = served.stream
    ex.cache_status = cache_status
    ex.response_bytes = len(served.body)
    # The same meaning as on a forwarded answer: time in the proxy up to the response head,
    # less the time spent waiting on an upstream (this request's own revalidation, or the
    # identical request's call that a collapsed one joined).
    upstream_ms = ex.upstream_ms or served.waited_ms
    headers = served.headers + ex.extra
    headers.append((b"server-timing", head_timing(ex, upstream_ms)))
    await ex.send({"type": "http.response.start", "status": served.status, "headers": headers})
    ex.response_started = True
    ex.ttfb_ms = (time.perf_counter() - ex.started) * 1000
    await ex.send({"type": "http.response.body", "body": served.body, "more_body": False})
    ex.written_at = time.perf_counter()
    if ex.marks is not None:
        ex.marks.append(("stream", time.perf_counter()))
