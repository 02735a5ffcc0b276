"""The management API served for real by uvicorn on a loopback port, in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount

from proxy.manage import create_management_app
from proxy.manage.guard import error_response
from shared.config import Settings
from shared.crypto import load_keyring
from shared.errors import RouteNotFound
from shared.redis import make_redis, uses_redis
from shared.store import make_store


class RecordingNotifier:
    """A ChangeNotifier that remembers what it was told (the proxy's cache invalidation seam)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.projects: list[str] = []
        self.purges: list[tuple[str | None, str | None]] = []

    async def tokens_changed(self, token_ids: list[str]) -> None:
        self.tokens.extend(token_ids)

    async def project_changed(self, project_id: str) -> None:
        self.projects.append(project_id)

    async def cache_purged(self, project_id: str | None, path_prefix: str | None) -> None:
        self.purges.append((project_id, path_prefix))


def host_app(settings: Settings, notifier: RecordingNotifier) -> Starlette:
    """What the proxy's app factory does for this API: open the store, mount at /manage."""
    store = make_store(settings)
    keyring = load_keyring(settings)

    redis = make_redis(settings) if uses_redis(settings) else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        await store.migrate()
        yield
        await store.close()
        if redis is not None:
            await redis.aclose()

    management = create_management_app(settings, store, keyring, notifier, redis=redis)

    async def not_found(request: Request, exc: Exception) -> Response:
        # Under /manage/, as the proxy answers a path its router cannot place (a newline in an
        # id, say); elsewhere a plain 404, as from a server that is not llm-proxy at all.
        if request.url.path.startswith("/manage/"):
            return error_response(RouteNotFound())
        return PlainTextResponse("Not Found", status_code=404)

    return Starlette(
        routes=[Mount("/manage", app=management)],
        lifespan=lifespan,
        exception_handlers={404: not_found},
    )


class ManagementServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier = RecordingNotifier()
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP, and without it every keep-alive reply waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            host_app(settings, self.notifier),
            lifespan="on",
            ws="none",
            log_config=None,  # records propagate to the root logger, where tests look
            access_log=True,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="management-api", daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()/stop() in the test's thread
            self._error = exc

    def start(self) -> ManagementServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"management server did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> ManagementServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
