"""The ASGI app: ``/v1/...`` goes straight to the hot-path handler, the rest to Starlette."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.auth import Authenticator, StoreHealth, TokenCache
from proxy.budgets import make_budgeter
from proxy.bus import make_bus
from proxy.cache import CacheBackend, HttpCache, build_cache
from proxy.console import Backend, LiveFigures, create_console_app
from proxy.handler import ProxyHandler
from proxy.invalidation import Invalidator
from proxy.limits import LimitStats, make_limiter
from proxy.manage import create_management_app
from proxy.metrics import Metrics, multiprocess_dir, render
from proxy.profiling import Profiler
from proxy.redis_client import FastRedis
from proxy.upstream import Upstream
from proxy.upstream.breaker import breaker_policy
from proxy.upstream.breaker_redis import RedisBreakers
from shared.config import Settings
from shared.crypto import Keyring, load_keyring
from shared.errors import ConfigError, LLMProxyError, RouteNotFound, Unavailable, error_body
from shared.events import EventBus
from shared.invalidation import Notifier
from shared.invalidation import channel as invalidation_channel
from shared.logging import setup_logging
from shared.redis import make_redis, uses_redis
from shared.redis import reachable as redis_reachable
from shared.store import SqlStore, make_store
from shared.tracing import make_tracing

if TYPE_CHECKING:
    from proxy.tracing import RequestTracing

log = logging.getLogger("llm_proxy.app")


@dataclass
class Resources:
    """What the lifespan builds and the routes use."""

    store: SqlStore
    keyring: Keyring
    bus: EventBus
    upstream: Upstream
    invalidator: Invalidator
    notifier: Notifier
    redis: aioredis.Redis | None


class ProxyApp:
    """The ASGI callable gunicorn's workers serve."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.handler: ProxyHandler | None = None
        self.resources: Resources | None = None
        self.draining = False
        self.manage_app: ASGIApp | None = None
        self.console_app: ASGIApp | None = None
        self.live: LiveFigures | None = None
        errors = {HTTPException: _http_error, LLMProxyError: _proxy_error}
        routes: list[BaseRoute] = [
            Route("/health", self._live),
            Route("/live", self._live),
            Route("/ready", self._ready),
        ]
        manage = [Mount("/manage", app=self._manage)]
        if settings.console_on:  # the console lives wherever the management API does
            manage.append(Mount("/console", app=self._console))
        # MANAGEMENT_LISTEN: the management API answers on that listener only, and nothing else
        # does; the server binds both addresses, and a connection's local port tells them apart.
        self.management_port = settings.management_port
        self.management_web: ASGIApp | None = None
        if self.management_port is None:
            routes.extend(manage)
        else:
            self.management_web = Starlette(routes=list(manage), exception_handlers=errors)
        if settings.enable_metrics:
            routes.append(Route(settings.metrics_path, self._metrics))
        self.web = Starlette(routes=routes, lifespan=self._lifespan, exception_handlers=errors)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.management_web is not None and _local_port(scope) == self.management_port:
            await self.management_web(scope, receive, send)
        elif (
            scope["type"] == "http"
            and self.handler is not None
            # the Azure-shaped path of AzureOpenAI clients goes the same way (proxy/routing.py)
            and (scope["path"].startswith(("/v1/", "/openai/deployments/")))
        ):
            await self.handler(scope, receive, send)
        else:
            await self.web(scope, receive, send)

    def begin_drain(self) -> None:
        """SIGTERM arrived: report not-ready and ask keep-alive clients to reconnect elsewhere;
        the server finishes in-flight requests before the lifespan shutdown runs."""
        self.draining = True
        if self.handler is not None:
            self.handler.draining = True

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        setup_logging(settings.log_level, settings.log_format)
        keyring = load_keyring(settings)
        store = make_store(settings)
        await store.open()
        await _prepare_schema(settings, store)
        redis = make_redis(settings) if uses_redis(settings) else None
        # one lean client for the per-request Redis calls (limits, cache lookups)
        fast = FastRedis.from_settings(settings) if redis is not None else None
        metrics = self.metrics
        limiter = make_limiter(
            settings,
            store,
            fast if settings.distributed_rate_limit_enabled else None,
            stats=LimitStats(
                on_limited=lambda kind: metrics.rate_limited.labels(kind).inc(),
                on_fallback=metrics.rate_limit_fallbacks.inc,
            ),
        )
        bus = make_bus(settings, store)
        await bus.start()
        bus_metrics = asyncio.create_task(self.metrics.follow_bus(bus), name="bus-metrics")
        http_cache = build_cache(settings, redis, fast=fast)
        upstream = Upstream(settings)
        await upstream.start()
        token_cache = TokenCache(
            settings.apikey_cache_size,
            settings.apikey_cache_ttl_ms / 1000,
            settings.apikey_cache_outage_ttl_ms / 1000,
        )
        store_health = StoreHealth()
        invalidator = Invalidator(
            store,
            token_cache,
            interval=settings.invalidation_poll_interval,
            redis=redis,
            channel=invalidation_channel(settings),
            responses=_local_cache(http_cache),
            health=store_health,
        )
        await invalidator.start()
        self.resources = Resources(
            store=store,
            keyring=keyring,
            bus=bus,
            upstream=upstream,
            invalidator=invalidator,
            notifier=Notifier(store, redis, channel=invalidation_channel(settings)),
            redis=redis,
        )
        tracing = _tracing(settings)
        profiler = None
        if settings.profiling_enabled:
            profiler = Profiler(
                settings.profiling_keep, multiprocess_dir(), self.metrics.phase_duration
            )
            await profiler.start()
        budgets = make_budgeter(
            settings,
            store,
            fast,
            on_soft_exceeded=self.metrics.money.soft_exceeded.inc,
            on_fallback=self.metrics.money.budget_fallbacks.inc,
        )
        self.handler = ProxyHandler(
            settings,
            auth=Authenticator(store, keyring, token_cache, store_health),
            upstream=upstream,
            bus=bus,
            metrics=self.metrics,
            limiter=limiter,
            cache=http_cache,
            tracing=tracing,
            profiler=profiler,
            breakers=(
                RedisBreakers(redis, breaker_policy(settings), prefix=settings.breaker_key_prefix)
                if redis is not None
                else None
            ),
            budgets=budgets,
        )
        handler = self.handler
        self.metrics.serving = lambda: handler.in_flight
        self.manage_app = create_management_app(
            settings,
            store,
            keyring,
            self.resources.notifier,
            cache=_shared_cache(http_cache),
            redis=redis,
            profiler=profiler,
        )
        if settings.console_on:
            self.live = LiveFigures(
                self.metrics.registry,
                interval_ms=settings.metrics_aggregation_interval_ms,
                retention_ms=settings.metrics_retention_ms,
                redis=redis,
                stream_key=f"{settings.redis_stream_key}:console-live",
            )
            self.live.start()
            backend = Backend(
                store=store,
                keyring=keyring,
                notifier=self.resources.notifier,
                cache=_shared_cache(http_cache),
                cache_backend=settings.http_cache_backend,
                count_cache_hits=settings.quota_count_cache_hits,
                profiler=profiler,
            )
            self.console_app = create_console_app(settings, backend, self.live)
        if settings.pool_warm:
            await _warm(store, upstream)
        log.info(
            "llm-proxy worker ready (db=%s, event bus=%s)", settings.db_driver, settings.event_bus
        )
        try:
            yield
        finally:
            self.handler = None
            self.manage_app = None
            self.console_app = None
            if self.live is not None:
                await self.live.close()
            await invalidator.close()
            if profiler is not None:
                await profiler.close()
            bus_metrics.cancel()
            await bus.close()  # flush events of every request served
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)  # export the spans still queued
            await upstream.close()
            await limiter.close()
            await budgets.close()  # the settled spend still held by this worker
            if http_cache is not None:
                await http_cache.aclose()
            if fast is not None:
                await fast.aclose()
            if redis is not None:
                await redis.aclose()
            await store.close()

    async def _manage(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.manage_app is None:
            response = JSONResponse(error_body(Unavailable("Starting up.")), status_code=503)
            await response(scope, receive, send)
            return
        await self.manage_app(scope, receive, send)

    async def _console(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.console_app is None:
            response = JSONResponse(error_body(Unavailable("Starting up.")), status_code=503)
            await response(scope, receive, send)
            return
        await self.console_app(scope, receive, send)

    async def _live(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _ready(self, request: Request) -> Response:
        """Ready while this worker can serve. The database being unreachable alone does not
        make it unready as long as cached credentials may still be used (docs/operations.md):
        a database blip must not pull every proxy out of the load balancer at once."""
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        res = self.resources
        if res is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        failed = []
        try:
            await asyncio.wait_for(res.store.ping(), 2.0)
        except Exception as exc:
            res.invalidator.health.failed(time.time(), exc)
            failed.append("database")
        if res.redis is not None and not await redis_reachable(res.redis, 2.0):
            failed.append("redis")
        if failed == ["database"] and res.invalidator.cache.can_serve_in_outage(time.time()):
            return JSONResponse({"status": "degraded", "failed": failed})
        if failed:
            return JSONResponse({"status": "unavailable", "failed": failed}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def _metrics(self, request: Request) -> Response:
        body, content_type = render(self.metrics.registry)
        return Response(body, media_type=content_type)


def _local_port(scope: dict[str, Any]) -> int | None:
    """The port the connection came in on (the ASGI ``server`` address is the accepted socket's
    own address); None for the lifespan, which has no connection."""
    server = scope.get("server")
    return server[1] if server else None


def _tracing(settings: Settings) -> RequestTracing | None:
    otel = make_tracing(settings, "llm-proxy")
    if otel is None:
        return None
    from proxy.tracing import RequestTracing  # the optional extra, only when configured

    return RequestTracing(otel)


async def _prepare_schema(settings: Settings, store: SqlStore) -> None:
    """SQLite migrates itself; Postgres must have been migrated by `llm-proxy migrate`."""
    if settings.db_driver == "sqlite":
        await store.migrate()
        return
    try:
        version = await asyncio.wait_for(store.schema_version(), 10.0)
    except Exception as exc:  # not reachable yet: serve, and report it on /ready
        log.warning("database not reachable at start (%s); /ready will say so", exc)
        return
    if version == 0:
        raise ConfigError("the database has no schema yet: run `llm-proxy migrate` first")


def _local_cache(cache: HttpCache | None) -> CacheBackend | None:
    """The backend purges must reach in this worker: an in-memory one."""
    return cache.backend if cache is not None and cache.scope == "this-process" else None


def _shared_cache(cache: HttpCache | None) -> CacheBackend | None:
    """The backend a purge clears for every instance at once: Redis."""
    return cache.backend if cache is not None and cache.scope == "all-instances" else None


async def _warm(store: SqlStore, upstream: Upstream) -> None:
    try:
        projects = [p for p in await store.list_projects() if p.is_active]
        urls = [p.base_url for p in projects]
        for project in projects:  # a project's several upstreams, if it has them
            urls += [u.base_url for u in await store.list_upstreams(project.id) if u.enabled]
    except Exception as exc:
        log.warning("could not list projects to warm the pool: %s", exc)
        return
    await upstream.warm(urls)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = RouteNotFound() if exc.status_code == 404 else LLMProxyError(exc.detail)
    err.status = exc.status_code
    return JSONResponse(error_body(err), status_code=exc.status_code)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LLMProxyError)
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)


def create_app(settings: Settings | None = None) -> ProxyApp:
    """The app for gunicorn/uvicorn. Settings are read from the environment when not given."""
    return ProxyApp(settings if settings is not None else Settings.from_env())
