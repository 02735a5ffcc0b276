"""The management API as a Starlette sub-application, mounted by the proxy under ``/manage``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.limits.clientip import TrustedProxies
from proxy.manage.fields import parse_inputs
from proxy.manage.guard import REQUEST_ID_KEY, ManagementGuard, client_ip, error_response
from proxy.manage.openapi import OPENAPI_PATH, openapi_document
from proxy.manage.routes import ENDPOINTS, Endpoint
from proxy.profiling import Profiler
from shared.config import Settings
from shared.crypto import Keyring
from shared.errors import (
    BodyTooLarge,
    LLMProxyError,
    MethodNotAllowed,
    RouteNotFound,
    UserError,
)
from shared.logging import redact
from shared.management import CachePurger, ChangeNotifier, Management
from shared.store import SqlStore
from shared.version import package_version

log = logging.getLogger("llm_proxy.manage")

MAX_BODY_BYTES = 64 * 1024  # a management request is a handful of short fields


def create_management_app(
    settings: Settings,
    store: SqlStore,
    keyring: Keyring,
    notifier: ChangeNotifier | None = None,
    *,
    cache: CachePurger | None = None,
    profiler: Profiler | None = None,
    redis: aioredis.Redis | None = None,
) -> Starlette:
    """The management API over an opened ``store``. Mount it at ``/manage``; the caller owns the
    store's lifecycle (the sub-application has no lifespan of its own)."""

    def management(request: Request) -> Management:
        ip = client_ip(request.scope)
        return Management(
            store=store,
            keyring=keyring,
            actor=f"api:{ip or 'unknown'}",
            notifier=notifier,
            client_ip=ip,
            request_id=request.scope.get(REQUEST_ID_KEY, ""),
            count_cache_hits=settings.quota_count_cache_hits,
            cache=cache,
            cache_backend=settings.http_cache_backend,
            event_bus=settings.event_bus,
            redis=redis,
            stream_key=settings.redis_stream_key,
        )

    # One route per path, so that a 405 (and OPTIONS) names every method the path takes.
    by_path: dict[str, dict[str, Endpoint]] = {}
    for ep in ENDPOINTS:
        by_path.setdefault(ep.path, {})[ep.method] = ep
    routes = [
        Route(path, _by_method(eps, management), methods=list(eps), name=path)
        for path, eps in by_path.items()
    ]
    schema = openapi_document(package_version())

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema)

    routes.append(Route(OPENAPI_PATH, openapi, methods=["GET"], name="openapi"))

    async def profiling(request: Request) -> Response:
        raw = request.query_params.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise UserError("limit must be an integer from 1 to 1000.")
        if profiler is None:
            return JSONResponse({"enabled": False, "requests": []})
        return JSONResponse({"enabled": True, "requests": profiler.report(int(raw))})

    routes.append(Route("/profiling", profiling, methods=["GET"], name="profiling"))
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                ManagementGuard,
                token=settings.management_token,
                trusted=TrustedProxies.parse(settings.trusted_proxies),
            )
        ],
        exception_handlers={
            LLMProxyError: _render_error,
            HTTPException: _render_http_error,
        },
    )


def _by_method(
    eps: dict[str, Endpoint], management: Callable[[Request], Management]
) -> Callable[[Request], Awaitable[Response]]:
    handlers = {method: _endpoint(ep, management) for method, ep in eps.items()}
    if "GET" in handlers:
        handlers["HEAD"] = handlers["GET"]

    async def handle(request: Request) -> Response:
        return await handlers[request.method](request)

    return handle


def _endpoint(
    ep: Endpoint, management: Callable[[Request], Management]
) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        raw = await _read_body(request) if ep.takes_body else b""
        inputs = parse_inputs(ep, request.path_params, request.query_params, raw)
        try:
            result = await management(request).call(ep, inputs)
        except LLMProxyError:
            raise
        except Exception as exc:
            # One masked line, then the generic 500 envelope: driver messages can quote input.
            log.error(
                "management %s failed: %s: %s",
                ep.operation_id,
                type(exc).__name__,
                redact(str(exc)).splitlines()[0] if str(exc) else "",
                extra={"request_id": request.scope.get(REQUEST_ID_KEY, "")},
            )
            raise LLMProxyError() from None
        return JSONResponse(result, status_code=ep.status)

    return handle


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"request body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LLMProxyError)
    return error_response(exc)


async def _render_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        headers = dict(exc.headers or {})
        if request.method == "OPTIONS":  # what the path takes, which is what OPTIONS asks
            return Response(status_code=204, headers={"Allow": headers["Allow"] + ", OPTIONS"})
        return error_response(MethodNotAllowed(headers=headers))
    if exc.status_code == 404:
        return error_response(RouteNotFound("Unknown management endpoint."))
    return error_response(UserError(str(exc.detail)))
