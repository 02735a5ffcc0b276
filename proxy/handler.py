"""The hot path: every ``/v1/...`` request, as a plain ASGI callable (no routing framework).

auth → (limits, cache: later issues) → forward → stream back → record one event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proxy.auth import Authenticator, Credential, token_from_headers
from proxy.body import ClientGone, StreamedBody, read_body
from proxy.headers import Cors, request_id_from, response_headers, server_timing, upstream_headers
from proxy.limits import NO_LIMITS, Limiter, TrustedProxies, scope_client_ip
from proxy.metrics import Metrics
from proxy.routing import Route, Router
from proxy.upstream import Upstream, read_chunk
from proxy.usage import SseUsage, Usage, inject_include_usage, usage_from_json
from shared.clock import new_id
from shared.config import Settings
from shared.errors import LLMProxyError, Overloaded, Unavailable, error_body
from shared.events import EventBus, RequestEvent

log = logging.getLogger("llm_proxy.proxy")

Scope = dict[str, Any]
Receive = Any
Send = Any

_USAGE_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})
_JSON_CAPTURE = 1 << 20  # bytes of a JSON response kept to read its usage


@dataclass(slots=True)
class Outcome:
    """What is known about a request as it goes, for its event and metrics."""

    status: int = 0
    endpoint: str = "other"
    upstream_ms: float = 0.0
    ttfb_ms: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    stream: bool = False
    error: str = ""
    cache_status: str = ""
    usage: Usage | None = None


class ProxyHandler:
    def __init__(
        self,
        settings: Settings,
        *,
        auth: Authenticator,
        upstream: Upstream,
        bus: EventBus,
        metrics: Metrics,
        limiter: Limiter,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.trusted = TrustedProxies.parse(settings.trusted_proxies)
        self.router = Router(settings.allowed_endpoints, settings.allowed_methods)
        self.auth = auth
        self.upstream = upstream
        self.bus = bus
        self.metrics = metrics
        self.cors = (
            Cors(settings.cors_allowed_origins, settings.allowed_methods)
            if settings.cors_allowed_origins
            else None
        )
        self.limiter = limiter
        self.trusted = TrustedProxies.parse(settings.trusted_proxies)
        self.reject_unrecorded = getattr(settings, "event_bus_failure_mode", "spool") == "reject"
        self.in_flight = 0
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        arrived = time.time()
        method: str = scope["method"]
        authorization = api_key = request_id_raw = origin = content_length = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"api-key" or name == b"x-api-key":
                api_key = value
            elif name == b"x-request-id":
                request_id_raw = value
            elif name == b"origin":
                origin = value
            elif name == b"content-length":
                content_length = value
            elif name == b"access-control-request-method":
                preflight = True
        request_id = request_id_from(request_id_raw)
        extra = [(b"x-request-id", request_id.encode())]
        if self.cors is not None and self.cors.allowed(origin):
            assert origin is not None
            if method == "OPTIONS" and preflight:
                await _send_empty(send, 204, extra + self.cors.preflight(origin))
                return
            extra += self.cors.headers(origin)
        if self.draining:
            extra.append((b"connection", b"close"))

        outcome = Outcome()
        cred: Credential | None = None
        admission = NO_LIMITS
        client_ip = scope_client_ip(scope, self.trusted)
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            route = self.router.match(method, scope.get("raw_path") or b"", scope["query_string"])
            outcome.endpoint = route.endpoint
            cap = self.settings.max_in_flight_requests
            if cap and self.in_flight > cap:
                raise Overloaded(headers={"retry-after": "1"})
            cred = await self.auth.authenticate(token_from_headers(authorization, api_key))
            if self.reject_unrecorded and not self.bus.can_record():
                raise Unavailable("Requests cannot be recorded right now; retry shortly.")
            admission = await self.limiter.admit(cred.limits, client_ip)
            if admission.limit:
                extra += [(k.lower().encode(), v.encode()) for k, v in admission.headers().items()]
            body = await read_body(
                receive, method, content_length, self.settings.max_request_body_bytes
            )
            await self._forward(
                scope, receive, send, route, cred, body, request_id, extra, started, outcome
            )
        except LLMProxyError as exc:
            outcome.status = exc.status
            outcome.error = exc.code
            await self._send_error(send, exc, extra)
        except ClientGone:
            outcome.error = "client_disconnected"
            outcome.status = outcome.status or 499
            self.metrics.client_disconnects.inc()
        finally:
            await admission.release()
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            duration = time.perf_counter() - started
            self.metrics.observe(
                outcome.endpoint,
                method,
                outcome.status,
                duration,
                outcome.upstream_ms / 1000,
                outcome.ttfb_ms / 1000,
            )
            if outcome.error == "invalid_api_key":
                self.metrics.auth_failures.inc()
            elif outcome.status in (429, 503) and outcome.error:
                self.metrics.rejections.labels(outcome.error).inc()
            if cred is not None:
                self._record(
                    method, scope["path"], request_id, arrived, duration, cred, outcome, client_ip
                )

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        cred: Credential,
        body: bytes | StreamedBody | None,
        request_id: str,
        extra: list[tuple[bytes, bytes]],
        started: float,
        outcome: Outcome,
    ) -> None:
        method: str = scope["method"]
        query: bytes = scope["query_string"]
        url = cred.base_url + route.rest + ("?" + query.decode("ascii") if query else "")
        inject = False
        if isinstance(body, bytes):
            outcome.request_bytes = len(body)
            if (
                self.settings.stream_include_usage
                and method == "POST"
                and route.endpoint in _USAGE_ENDPOINTS
            ):
                changed = inject_include_usage(body)
                if changed is not None:
                    body, inject = changed, True
        headers = upstream_headers(
            scope["headers"],
            cred.api_key,
            request_id,
            forward_org=self.settings.forward_openai_org_headers,
        )
        sent_at = time.perf_counter()
        try:
            response = await self.upstream.request(method, url, headers, body)
        except LLMProxyError:
            if isinstance(body, StreamedBody) and body.error is not None:
                raise body.error from None  # our side failed, not the upstream
            raise
        try:
            await self._relay(response, receive, send, extra, started, sent_at, inject, outcome)
        finally:
            response.release()

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        started: float,
        sent_at: float,
        inject: bool,
        outcome: Outcome,
    ) -> None:
        headers_at = time.perf_counter()
        outcome.status = response.status
        content_type = response.headers.get("content-type", "")
        is_sse = content_type.startswith("text/event-stream")
        outcome.stream = is_sse
        sse = SseUsage(strip=inject) if is_sse else None
        capture: bytearray | None = bytearray() if not is_sse and "json" in content_type else None
        out_headers = response_headers(response.raw_headers, keep_length=not (is_sse and inject))
        proxy_ms = (sent_at - started + time.perf_counter() - headers_at) * 1000
        out_headers.append(
            (b"server-timing", server_timing(proxy_ms, (headers_at - sent_at) * 1000))
        )
        out_headers += extra
        await send(
            {"type": "http.response.start", "status": response.status, "headers": out_headers}
        )

        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone, response))
        chunk_size = self.settings.stream_response_chunk_size
        sent = 0
        try:
            while True:
                try:
                    chunk = await read_chunk(response, chunk_size)
                except LLMProxyError as exc:
                    if gone.is_set():
                        raise ClientGone() from None
                    outcome.error = exc.code
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
                    outcome.ttfb_ms = (time.perf_counter() - started) * 1000
                if sse is not None:
                    chunk = sse.feed(chunk)
                elif capture is not None and len(capture) < _JSON_CAPTURE:
                    capture += chunk
                if chunk:
                    sent += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if gone.is_set():
                    raise ClientGone()
            tail = sse.finish() if sse is not None else b""
            sent += len(tail)
            watcher.cancel()  # before the last send: a finished response is not a disconnect
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            watcher.cancel()
            outcome.response_bytes = sent
            outcome.upstream_ms = (time.perf_counter() - sent_at) * 1000
            if sse is not None:
                outcome.usage = sse.usage
            elif capture is not None and len(capture) < _JSON_CAPTURE:
                outcome.usage = usage_from_json(bytes(capture))

    async def _send_error(
        self, send: Send, exc: LLMProxyError, extra: list[tuple[bytes, bytes]]
    ) -> None:
        body = orjson.dumps(error_body(exc))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
            *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
        ]
        try:
            await send({"type": "http.response.start", "status": exc.status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # the response had already started, or the client is gone
            raise ClientGone() from None

    def _record(
        self,
        method: str,
        path: str,
        request_id: str,
        arrived: float,
        duration: float,
        cred: Credential,
        outcome: Outcome,
        client_ip: str,
    ) -> None:
        usage = outcome.usage or Usage()
        event = RequestEvent(
            event_id=new_id(),
            request_id=request_id,
            ts=arrived,
            project_id=cred.project_id,
            token_id=cred.token_id,
            method=method,
            path=path[:512],
            status=outcome.status,
            duration_ms=duration * 1000,
            upstream_ms=outcome.upstream_ms,
            ttfb_ms=outcome.ttfb_ms,
            request_bytes=outcome.request_bytes,
            response_bytes=outcome.response_bytes,
            model=usage.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cache_status=outcome.cache_status,
            stream=outcome.stream,
            error=outcome.error,
            client_ip=client_ip,
        )
        dropped = getattr(self.bus, "dropped", 0)
        try:
            self.bus.publish(event)
        except Exception:  # recording must never fail the request
            log.exception("publishing a request event failed")
        if getattr(self.bus, "dropped", 0) != dropped:
            self.metrics.event_drops.inc()


async def _watch_disconnect(
    receive: Receive, gone: asyncio.Event, response: aiohttp.ClientResponse
) -> None:
    """Wait for the client to go away; then close the upstream response at once, so a
    streaming upstream stops generating (and billing) for nobody."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            response.close()
            return


async def _send_empty(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
