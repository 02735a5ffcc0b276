"""The management API as a Starlette sub-application, mounted by the proxy under ``/manage``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.limits.clientip import TrustedProxies
from proxy.manage.fields import parse_body, parse_query
from proxy.manage.guard import REQUEST_ID_KEY, ManagementGuard, client_ip, error_response
from proxy.manage.openapi import OPENAPI_PATH, openapi_document
from proxy.manage.routes import ENDPOINTS, Call, Endpoint
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
from shared.manage import CachePurger, ChangeNotifier, Management
from shared.store import SqlStore

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
        )

    routes = [
        Route(ep.path, _endpoint(ep, management), methods=[ep.method], name=ep.operation)
        for ep in ENDPOINTS
    ]
    schema = openapi_document(_version())

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


def _endpoint(
    ep: Endpoint, management: Callable[[Request], Management]
) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        body = parse_body(await _read_body(request), ep.body) if ep.body is not None else {}
        call = Call(request.path_params, body, parse_query(request.query_params, ep.query))
        try:
            result = await ep.handler(management(request), call)
        except LLMProxyError:
            raise
        except Exception as exc:
            # One masked line, then the generic 500 envelope: driver messages can quote input.
            log.error(
                "management %s failed: %s: %s",
                ep.operation,
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
        return error_response(MethodNotAllowed(headers=dict(exc.headers or {})))
    if exc.status_code == 404:
        return error_response(RouteNotFound("Unknown management endpoint."))
    return error_response(UserError(str(exc.detail)))


def _version() -> str:
    try:
        return version("llm-proxy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"
