"""The dispatcher's own small HTTP endpoint: ``/metrics``, ``/health`` and ``/ready``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatcher.metrics import DispatcherMetrics

log = logging.getLogger("llm_proxy.dispatcher")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """GET only, one response per connection: Prometheus and probes need nothing more, and this
    keeps the dispatcher free of a web framework."""

    def __init__(
        self,
        metrics: DispatcherMetrics,
        *,
        refresh: Callable[[], Awaitable[None]] | None = None,
        probe: Callable[[], Awaitable[None]] | None = None,
        host: str = "0.0.0.0",  # noqa: S104 - metrics are scraped from outside the pod
        port: int = 8081,
    ) -> None:
        self.metrics = metrics
        self.refresh = refresh
        self.probe = probe
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("dispatcher metrics and health on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            status, ctype, body = await self._respond(method, path)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            if self.refresh is not None:
                with contextlib.suppress(Exception):  # stale gauges beat a failed scrape
                    await asyncio.wait_for(self.refresh(), 2)
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/health":
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/ready":
            if self.probe is not None:
                # An idle dispatcher has nothing to fail on: ask the database and Redis now.
                # The probe bounds each check itself; this bound is the backstop.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.probe(), 10)
            checks = {
                "database": "up" if self.metrics.database_ok else "down",
                "redis": "up" if self.metrics.redis_ok else "down",
            }
            ready = all(v == "up" for v in checks.values())
            body = orjson.dumps({"status": "ok" if ready else "unavailable", **checks})
            return (200 if ready else 503), "application/json", body
        return 404, "text/plain", b"not found\n"
