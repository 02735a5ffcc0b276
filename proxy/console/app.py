"""The operator console as a Starlette sub-application, mounted by the proxy under ``/console``.

Server-rendered pages (Jinja2), htmx for the live tiles and uPlot for the charts, every asset
served from ``static/``. Sign-in, sessions and CSRF are in ``session.py``; every management
operation goes through ``actions.py``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from proxy.console.actions import Actions, Backend
from proxy.console.forms import form_of
from proxy.console.live import LiveFigures
from proxy.console.pages import PREFIX, Pages
from proxy.console.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginThrottle,
    Session,
    SessionSigner,
    request_is_https,
)
from proxy.limits.clientip import TrustedProxies, limit_key, scope_client_ip
from shared.config import Settings
from shared.errors import LLMProxyError, error_body
from shared.tokens import constant_time_equal

log = logging.getLogger("llm_proxy.console")

HERE = Path(__file__).parent
Handler = Callable[[Request, Actions, Session], Awaitable[Response]]

# The console loads nothing from elsewhere and may not be framed (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Console:
    """Routes, the sign-in gate, and the pages' shared rendering."""

    def __init__(self, settings: Settings, backend: Backend, live: LiveFigures) -> None:
        self.settings = settings
        self.backend = backend
        self.signer = SessionSigner(settings.management_token.get(), settings.console_session_ttl)
        self.throttle = LoginThrottle()
        self.trusted = TrustedProxies.parse(settings.trusted_proxies)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.pages = Pages(self, live)

    def app(self) -> Starlette:
        p = self.pages
        routes: list[BaseRoute] = [
            Route("/", self._page(p.overview)),
            Route("/overview/tiles", self._page(p.tiles)),
            Route("/live.json", self._page(p.live_json)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self._form(self.logout), methods=["POST"]),
            Route("/projects", self._page(p.projects)),
            Route("/projects", self._form(p.create_project), methods=["POST"]),
            Route("/projects/{project_id}", self._form(p.edit_project), methods=["POST"]),
            Route("/projects/{project_id}/active", self._form(p.project_active), methods=["POST"]),
            Route("/tokens", self._page(p.tokens)),
            Route("/tokens", self._form(p.generate_token), methods=["POST"]),
            Route("/tokens/{token_id}/{verb}", self._form(p.token_action), methods=["POST"]),
            Route("/usage", self._page(p.usage)),
            Route("/audit", self._page(p.audit)),
            Route("/slowest", self._page(p.slowest)),
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        return Starlette(routes=routes, exception_handlers={LLMProxyError: _error})

    # --- the gate ---

    def client(self, request: Request) -> str:
        return scope_client_ip(request.scope, self.trusted)

    def actions(self, request: Request) -> Actions:
        return Actions(
            self.backend, client_ip=self.client(request), request_id=secrets.token_hex(8)
        )

    def session(self, request: Request) -> Session | None:
        return self.signer.read(request.cookies.get(SESSION_COOKIE))

    def _https(self, request: Request) -> bool:
        client = request.scope.get("client")
        return request_is_https(
            request.url.scheme,
            client[0] if client else None,
            request.headers.get("x-forwarded-proto"),
            self.trusted,
        )

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def page(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                if request.headers.get("hx-request"):
                    # a polled fragment after the session ended: send the whole page to sign-in
                    return Response(status_code=401, headers={"HX-Redirect": f"{PREFIX}/login"})
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            return _secured(await handler(request, self.actions(request), session))

        return page

    def _form(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def form(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                return self.render(request, "denied.html", None, status=403, reason="signed-out")
            data = await form_of(request)
            presented = request.headers.get(CSRF_HEADER) or data.get(CSRF_FIELD)
            if not self.signer.csrf_ok(session, presented if isinstance(presented, str) else ""):
                log.warning("console: form without a valid CSRF token refused")
                return self.render(request, "denied.html", session, status=403, reason="csrf")
            return _secured(await handler(request, self.actions(request), session))

        return form

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status: int = 200,
        **ctx: Any,
    ) -> Response:
        context = {
            "base": PREFIX,
            "csrf": self.signer.csrf_token(session) if session else "",
            "signed_in": session is not None,
            "active": request.url.path.removeprefix(PREFIX).strip("/").split("/")[0],
            **ctx,
        }
        return _secured(
            self.templates.TemplateResponse(request, template, context, status_code=status)
        )

    # --- sign-in ---

    async def login_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        if self.session(request) is not None and not error:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        nonce = self.signer.login_nonce()
        response = self.render(request, "login.html", None, status=status, nonce=nonce, error=error)
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=3600,
            path=PREFIX,
            secure=self._https(request),
            httponly=True,
            samesite="strict",
        )
        return response

    async def login(self, request: Request) -> Response:
        data = await form_of(request)
        client = limit_key(self.client(request))  # IPv6: the /64, as the rate limits count
        actions = self.actions(request)
        nonce = data.get(CSRF_FIELD)
        if not self.signer.login_nonce_ok(
            request.cookies.get(LOGIN_COOKIE), nonce if isinstance(nonce, str) else None
        ):
            return self.render(request, "denied.html", None, status=403, reason="csrf")
        wait = self.throttle.retry_after(client)
        if wait > 0:
            log.warning("console: sign-in refused for %s, too many failures", client)
            response = await self.login_form(
                request, f"Too many failed sign-ins: try again in {int(wait) + 1} s.", 429
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        password = data.get("token")
        expected = self.settings.management_token.get()
        if not isinstance(password, str) or not constant_time_equal(password.strip(), expected):
            self.throttle.failed(client)
            await actions.audit_sign_in("console.login", "failure", "wrong management token")
            return await self.login_form(request, "That is not the management token.", 401)
        self.throttle.succeeded(client)
        await actions.audit_sign_in("console.login", "success")
        cookie, _ = self.signer.issue()
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self.settings.console_session_ttl),
            path=PREFIX,
            secure=self._https(request),
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return _secured(response)

    async def logout(self, request: Request, actions: Actions, session: Session) -> Response:
        await actions.audit_sign_in("console.logout", "success")
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LLMProxyError)
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)


def _secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_console_app(settings: Settings, backend: Backend, live: LiveFigures) -> Starlette:
    """The console over the lifespan's resources. Mount it at ``/console``."""
    return Console(settings, backend, live).app()
