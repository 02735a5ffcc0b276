"""The management API's gate: MANAGEMENT_TOKEN bearer auth, request id and client address."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.limits.clientip import TrustedProxies, scope_client_ip
from shared.config import Secret
from shared.errors import LLMProxyError, ManagementAuthError, ManagementDisabled, error_body
from shared.logging import redact
from shared.tokens import constant_time_equal

log = logging.getLogger("llm_proxy.manage")

# Where the request id lives in the ASGI scope. An outer middleware that already assigns ids may
# set it (and send X-Request-ID itself); the guard then uses that id instead of its own.
REQUEST_ID_KEY = "llm_proxy.request_id"
CLIENT_IP_KEY = "llm_proxy.client_ip"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(value: str | None) -> str:
    """The client's X-Request-ID when it is well-formed (it lands in logs and audit rows), else
    a new one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def client_ip(scope: Scope) -> str:
    """The client's address: the peer, or X-Forwarded-For when the peer is one of
    TRUSTED_PROXIES (the guard works it out once per request)."""
    known = scope.get(CLIENT_IP_KEY)
    if known is not None:
        return str(known)
    client = scope.get("client")
    return str(client[0]) if client else ""


def error_response(exc: LLMProxyError) -> JSONResponse:
    """The one way a management error becomes a reply."""
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers or None)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class ManagementGuard:
    """Pure ASGI middleware in front of every management route, the schema included: 503 when
    MANAGEMENT_TOKEN is unset, 401 unless ``Authorization: Bearer <MANAGEMENT_TOKEN>``.

    Rejections are logged (never the presented credential) rather than audited, so an
    unauthenticated flood cannot make the database write a row per request."""

    def __init__(self, app: ASGIApp, token: Secret, trusted: TrustedProxies | None = None) -> None:
        self.app = app
        self._token = token.get()
        self._trusted = trusted or TrustedProxies.parse(())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[CLIENT_IP_KEY] = scope_client_ip(scope, self._trusted)
        request_id = scope.get(REQUEST_ID_KEY)
        send_with_id: Send = send  # when an outer layer chose the id, it also returns it
        if request_id is None:
            request_id = scope[REQUEST_ID_KEY] = request_id_from(_header(scope, b"x-request-id"))
            echo = (b"x-request-id", request_id.encode())

            async def send_echoing_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), echo]
                await send(message)

            send_with_id = send_echoing_id

        try:
            self._check(scope, request_id)
        except LLMProxyError as exc:
            await error_response(exc)(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)

    def _check(self, scope: Scope, request_id: str) -> None:
        if not self._token:
            raise ManagementDisabled(
                "The management API is disabled: set MANAGEMENT_TOKEN on the server to enable it."
            )
        scheme, _, presented = (_header(scope, b"authorization") or "").strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            self._reject(scope, request_id, "missing")
            raise ManagementAuthError(
                "Missing management token: send Authorization: Bearer <MANAGEMENT_TOKEN>.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not constant_time_equal(presented, self._token):
            self._reject(scope, request_id, "invalid")
            raise ManagementAuthError(
                "Invalid management token.", headers={"WWW-Authenticate": "Bearer"}
            )

    @staticmethod
    def _reject(scope: Scope, request_id: str, why: str) -> None:
        extra: dict[str, Any] = {
            "request_id": request_id,
            "client_ip": client_ip(scope),
            "path": redact(scope.get("path", "")),  # people paste tokens into URLs
        }
        log.warning("management API: %s token", why, extra=extra)
