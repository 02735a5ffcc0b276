"""The hot path: every ``/v1/...`` request, as a plain ASGI callable (no routing framework).

route → auth → read body → cache lookup → limits → (hit: answer | miss: forward, fill) → event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import orjson

from proxy.auth import Authenticator, token_from_headers
from proxy.batching import ENDPOINT as BATCHED_ENDPOINT
from proxy.batching import Batcher, plan_merge
from proxy.body import ClientGone, read_body
from proxy.budgets import Budgeter, Reservation
from proxy.cache import HttpCache
from proxy.exchange import Exchange
from proxy.failover import Failover
from proxy.headers import Cors, request_id_from
from proxy.limits import NO_LIMITS, Limiter, TrustedProxies, scope_client_ip
from proxy.metrics import Metrics
from proxy.model_scope import check_model, names_model
from proxy.overhead import arrival, overhead_seconds
from proxy.profiling import Profiler, record_of
from proxy.ratelimit_headers import openai_request_headers
from proxy.relay import Relay, send_served
from proxy.routing import Router
from proxy.upstream import Upstream
from proxy.upstream.breaker import Breakers, MemoryBreakers, breaker_policy
from proxy.upstream.providers import error_body_for
from proxy.usage import Usage, bills_tokens
from proxy.usage_endpoint import PATH as USAGE_PATH
from proxy.usage_endpoint import usage_of
from shared.clock import new_id
from shared.config import Settings
from shared.errors import LLMProxyError, Overloaded, RouteNotFound, Unavailable
from shared.events import ACCEPTED, EventBus, RequestEvent

if TYPE_CHECKING:  # OpenTelemetry is an optional extra: imported only when tracing is on
    from proxy.tracing import RequestTracing

log = logging.getLogger("llm_proxy.proxy")

Scope = dict[str, Any]


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
        cache: HttpCache | None = None,
        profiler: Profiler | None = None,
        tracing: RequestTracing | None = None,
        breakers: Breakers | None = None,
        budgets: Budgeter | None = None,
    ) -> None:
        self.settings = settings
        self.profiler = profiler
        self.router = Router(settings.allowed_endpoints, settings.allowed_methods)
        self.auth = auth
        failover = Failover(
            upstream,
            breakers or MemoryBreakers(breaker_policy(settings)),
            metrics,
            attempts=settings.upstream_attempts,
            budget=settings.upstream_retry_budget,
        )
        self.relay = Relay(settings, upstream, failover)
        self.batcher = Batcher(settings, upstream) if settings.batching_enabled else None
        self.bus = bus
        self.metrics = metrics
        self.limiter = limiter
        self.cache = cache
        self.tracing = tracing
        # phase marks feed the profiler and the trace alike
        self.marking = profiler is not None or tracing is not None
        self.budgets = budgets
        self.trusted = TrustedProxies.parse(settings.trusted_proxies)
        self.cors = (
            Cors(settings.cors_allowed_origins, settings.allowed_methods)
            if settings.cors_allowed_origins
            else None
        )
        self.reject_unrecorded = settings.event_bus_failure_mode == "reject"
        self.max_in_flight = settings.max_in_flight_requests
        # cache lookups and limit checks both on Redis can share a round trip (see __call__)
        self.overlap_lookups = (
            cache is not None
            and cache.scope == "all-instances"
            and settings.distributed_rate_limit_enabled
        )
        self.count_cache_hits = settings.quota_count_cache_hits
        self.max_body = settings.max_request_body_bytes
        self.in_flight = 0
        self.draining = False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        started, arrived = arrival(scope)  # from the first bytes' arrival (proxy/overhead.py)
        method: str = scope["method"]
        authorization = api_key = request_id_raw = origin = content_length = content_type = None
        preflight = repeated = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                repeated = repeated or authorization is not None
                authorization = value
            elif name == b"api-key" or name == b"x-api-key":
                repeated = repeated or (api_key is not None and api_key != value)
                api_key = value
            elif name == b"x-request-id":
                request_id_raw = value
            elif name == b"origin":
                origin = value
            elif name == b"content-length":
                content_length = value
            elif name == b"content-type":
                content_type = value
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

        ex = Exchange(scope, receive, send, method, request_id, started, extra)
        marks = ex.marks = [] if self.marking else None
        if self.tracing is not None:
            ex.trace = self.tracing.begin(ex, arrived)
        admission = NO_LIMITS
        reservation: Reservation | None = None
        accepting: Awaitable[bool] | None = None  # the accepted record on its way
        client_ip = scope_client_ip(scope, self.trusted)
        self.in_flight += 1  # the gauge samples it (Metrics.follow_bus): no write per request
        try:
            if method == "GET" and scope["path"] == USAGE_PATH:  # answered here, not forwarded
                await self._usage(ex, authorization, api_key, repeated, extra)
                return
            ex.route = route = self.router.match(
                method, scope.get("raw_path") or b"", scope["query_string"]
            )
            ex.endpoint = route.endpoint
            if marks is not None:
                marks.append(("route", time.perf_counter()))
            if self.max_in_flight and self.in_flight > self.max_in_flight:
                raise Overloaded(headers={"retry-after": "1"})
            ex.cred = cred = await self.auth.authenticate(
                token_from_headers(authorization, api_key, repeated)
            )
            if not cred.provider.serves(route.endpoint) or (
                route.deployment and not cred.provider.maps_paths
            ):
                raise RouteNotFound(f"Unknown endpoint {scope['path']} for this project.")
            if marks is not None:
                marks.append(("auth", time.perf_counter()))
            if self.reject_unrecorded:  # room for this request's events, before any spend
                ex.event_id = new_id()
                if not self.bus.reserve(ex.event_id):
                    raise Unavailable("Requests cannot be recorded right now; retry shortly.")
            # usage endpoints' bodies are read whole: include_usage must be set in them and the
            # prompt estimated from them (docs/decisions.md, "Usage in every case"); so are the
            # bodies whose model a scope must check
            scoped = cred.models is not None and names_model(method, route.rest)
            ex.body = body = await read_body(
                receive,
                method,
                content_length,
                self.max_body,
                whole=scoped
                or bool(cred.budgets)
                or bills_tokens(method, route.endpoint, route.rest),
            )
            if scoped:  # before the cache and any upstream call: a refusal spends nothing
                assert cred.models is not None
                raw = body if isinstance(body, bytes) else None
                check_model(cred.models, route.rest, raw, content_type, route.deployment)
            if marks is not None:
                marks.append(("body", time.perf_counter()))
            cache = self.cache
            plan = served = None
            if cache is not None and (isinstance(body, bytes) or body is None):
                plan = cache.prepare(
                    cred.project_id,
                    method,
                    scope["path"],
                    scope["query_string"],
                    scope["headers"],
                    body or b"",
                )
            if (
                plan is not None
                and plan.cacheable
                and self.overlap_lookups
                and (cred.limits.max_requests is None or self.count_cache_hits)
            ):
                # Whether it is a hit does not matter to the limits here (no quota, or hits
                # count): ask Redis both at once, one round trip instead of two.
                assert cache is not None
                served, admission = await asyncio.gather(
                    cache.lookup(plan), self.limiter.admit(cred.limits, client_ip)
                )
            else:
                if (plan is None or not plan.cacheable) and cred.limits.max_requests is None:
                    # Bound for the upstream: its accepted record travels while the limits are
                    # asked. Not with a quota: the database's count of it (its fallback) must
                    # not include this request's own accepted row while deciding on it.
                    accepting = self._accept(ex, arrived, client_ip)
                if plan is not None:
                    assert cache is not None
                    served = await cache.lookup(plan)
                    if marks is not None:
                        marks.append(("cache", time.perf_counter()))
                admission = await self.limiter.admit(
                    cred.limits, client_ip, cache_hit=served is not None
                )
            if marks is not None:
                marks.append(("limits", time.perf_counter()))
            if admission.limit:
                extra += [(k.lower().encode(), v.encode()) for k, v in admission.headers().items()]
                extra += openai_request_headers(admission)
            merge = None
            if (
                self.batcher is not None
                and route.endpoint == BATCHED_ENDPOINT
                and not cred.upstreams  # the batcher calls the project's own upstream
                and not cred.provider.maps_paths
                and (plan is None or not plan.cacheable)
                and self.batcher.has_room()
            ):
                merge = plan_merge(ex)
            if served is not None:
                await send_served(ex, served, "hit")
                return
            if accepting is None:  # a cacheable miss
                accepting = self._accept(ex, arrived, client_ip)
            if cred.budgets and self.budgets is not None:  # a cache hit costs nothing
                reservation = await self.budgets.reserve(
                    cred.budgets,
                    cred.project_id,
                    cred.token_id,
                    body if isinstance(body, bytes) else None,
                    content_type,
                    arrived,
                )
                extra += reservation.headers
            if not await accepting and self.reject_unrecorded:
                raise Unavailable("Requests cannot be recorded right now; retry shortly.")
            if marks is not None:
                marks.append(("accept", time.perf_counter()))
            if merge is not None:
                assert self.batcher is not None
                ex.cache_status = "bypass" if plan is not None else ""
                await self.batcher.forward(ex, merge)
            elif cache is not None and plan is not None:
                async with cache.fill(plan) as fill:
                    if fill.served is not None:
                        await send_served(ex, fill.served, fill.status)
                    else:
                        await self.relay.forward(ex, fill)
                if not ex.cache_status:
                    ex.cache_status = fill.status
            else:
                await self.relay.forward(ex, None)
        except LLMProxyError as exc:
            ex.status = exc.status
            ex.error = exc.code
            if not ex.response_started and not await self._send_error(
                send, exc, extra, scope["path"]
            ):
                ex.error = "client_disconnected"
        except ClientGone:
            ex.error = "client_disconnected"
            ex.status = ex.status or 499
            self.metrics.client_disconnects.inc()
        except asyncio.CancelledError:
            # the server cut the request: the shutdown grace ran out while it was in flight
            ex.error = "interrupted"
            ex.status = ex.status or 503
            raise
        finally:
            await admission.release()
            self.in_flight -= 1
            event = self._finish(ex, arrived, client_ip)
            if ex.trace is not None:
                ex.trace.finish(ex)
            if reservation is not None:
                assert self.budgets is not None
                await self.budgets.settle(reservation, event)
            if event is not None and self.budgets is not None:
                try:
                    self.metrics.money.observe(event, await self.budgets.book())
                except Exception:  # the prices could not be read: counted without cost
                    self.metrics.money.observe(event, None)
            # last: the proxy's time for this request includes recording it
            self.metrics.observe_overhead(ex.endpoint, overhead_seconds(ex, time.perf_counter()))

    async def _usage(
        self,
        ex: Exchange,
        authorization: bytes | None,
        api_key: bytes | None,
        repeated: bool,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        """``GET /v1/usage`` for the calling token (proxy/usage_endpoint.py)."""
        ex.endpoint = USAGE_PATH
        ex.cred = cred = await self.auth.authenticate(
            token_from_headers(authorization, api_key, repeated)
        )
        reply = await usage_of(
            self.auth.store, cred, ex.scope["query_string"], count_cache_hits=self.count_cache_hits
        )
        body = orjson.dumps(reply)
        ex.status = 200
        ex.response_started = True
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await ex.send({"type": "http.response.start", "status": 200, "headers": headers})
        await ex.send({"type": "http.response.body", "body": body, "more_body": False})

    def _accept(self, ex: Exchange, arrived: float, client_ip: str) -> Awaitable[bool]:
        """The request's accepted record, published now; awaited (in the bus's destination or
        its spool) before the upstream is called, so a worker killed in flight still leaves a
        (flagged) row. Reject mode forwards nothing whose acceptance could not be kept."""
        cred = ex.cred
        assert cred is not None
        ex.event_id = ex.event_id or new_id()
        accepted = RequestEvent(
            event_id=ex.event_id,
            request_id=ex.request_id,
            ts=arrived,
            project_id=cred.project_id,
            token_id=cred.token_id,
            method=ex.method,
            path=ex.scope["path"][:512],
            status=0,
            client_ip=client_ip,
            phase=ACCEPTED,
        )
        return self.bus.accept(accepted)

    def _finish(self, ex: Exchange, arrived: float, client_ip: str) -> RequestEvent | None:
        """Metrics and the request's event (returned, if any); never raises."""
        duration = time.perf_counter() - ex.started
        metrics = self.metrics
        metrics.observe(
            ex.endpoint,
            ex.method,
            ex.status,
            duration,
            ex.upstream_ms / 1000,
            ex.ttfb_ms / 1000,
        )
        if ex.error == "invalid_api_key":
            metrics.auth_failures.inc()
        elif ex.status in (429, 503) and ex.error:
            metrics.rejections.labels(ex.error).inc()
        if ex.cache_status and self.cache is not None:
            metrics.cache_result(self.cache, ex.cache_status)
        cred = ex.cred
        if cred is None:
            return None
        usage = ex.usage or _NO_USAGE
        event = RequestEvent(
            event_id=ex.event_id or new_id(),
            request_id=ex.request_id,
            ts=arrived,
            project_id=cred.project_id,
            token_id=cred.token_id,
            method=ex.method,
            path=ex.scope["path"][:512],
            status=ex.status,
            duration_ms=duration * 1000,
            upstream_ms=ex.upstream_ms,
            ttfb_ms=ex.ttfb_ms,
            request_bytes=ex.request_bytes,
            response_bytes=ex.response_bytes,
            model=usage.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            usage_source=usage.source,
            cache_creation_tokens=usage.cache_creation_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            upstream=ex.upstream,
            attempts=ex.attempts,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_status=ex.cache_status,
            stream=ex.stream,
            error=ex.error,
            client_ip=client_ip,
        )
        if ex.trace is not None:
            event.trace_id, event.span_id = ex.trace.trace_id, ex.trace.span_id
        try:
            self.bus.publish(event)
        except Exception:  # recording must never fail the request
            log.exception("publishing a request event failed")
        if ex.marks is not None and self.profiler is not None:
            ex.marks.append(("record", time.perf_counter()))
            self.profiler.finish(
                ex.started,
                ex.marks,
                record_of(ex.request_id, ex.method, event.path, ex.status),
            )
        return event

    async def _send_error(
        self, send: Any, exc: LLMProxyError, extra: list[tuple[bytes, bytes]], path: str
    ) -> bool:
        """Answer with the error envelope of the API the client speaks; False if the client
        is already gone."""
        body = orjson.dumps(error_body_for(path, exc))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
            *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
        ]
        try:
            await send({"type": "http.response.start", "status": exc.status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:
            return False
        return True


_NO_USAGE = Usage()


async def _send_empty(send: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
