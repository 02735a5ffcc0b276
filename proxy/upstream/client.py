"""The upstream client: keep-alive pools per origin (our own HTTP/1.1 client, chosen by
measurement over aiohttp and httpx; see docs/decisions.md), errors mapped to 502/503/504,
egress through HTTP_PROXY / HTTPS_PROXY, an optional client certificate."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
from collections.abc import Mapping

from proxy.upstream.egress import Egress
from proxy.upstream.pool import Limits, Pool, Response, send
from proxy.upstream.wire import Body
from shared.config import Settings
from shared.errors import ConfigError

log = logging.getLogger("llm_proxy.upstream")


class Upstream:
    """One per worker. ``request`` returns the response once its headers are in; read the body
    with ``read_chunk`` and finish with ``release()`` (or ``close()`` to abandon it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pools: dict[tuple[str, str, int], Pool] = {}
        self._origins: dict[str, tuple[Pool, bytes]] = {}  # base URL → pool, path prefix
        self._ssl: ssl.SSLContext | None = None
        self._maintainer: asyncio.Task[None] | None = None
        s = settings
        self.egress = Egress(s.http_proxy, s.https_proxy, s.no_proxy)
        self.limits = Limits(
            connections=s.pool_max_connections,
            acquire_timeout=s.pool_acquire_timeout,
            connect_timeout=s.upstream_connect_timeout,
            read_timeout=s.upstream_read_timeout,
            max_header_bytes=s.upstream_max_header_bytes,
            max_headers=s.upstream_max_headers,
            max_age=s.upstream_connection_max_age,
            reuse=not s.disable_connection_pool,
        )

    async def start(self) -> None:
        s = self.settings
        self._ssl = ssl.create_default_context(cafile=s.upstream_ca_file or None)
        self._ssl.set_alpn_protocols(["http/1.1"])
        if s.upstream_client_cert_file:
            try:
                self._ssl.load_cert_chain(
                    s.upstream_client_cert_file, s.upstream_client_key_file or None
                )
            except (OSError, ssl.SSLError) as exc:  # a missing file, a key that does not match
                raise ConfigError(
                    f"UPSTREAM_CLIENT_CERT_FILE / UPSTREAM_CLIENT_KEY_FILE could not be loaded: "
                    f"{exc.strerror or exc}"
                ) from None
        if self.settings.pool_min_connections and not self.settings.disable_connection_pool:
            self._maintainer = asyncio.create_task(self._maintain(), name="upstream-pools")

    def route(self, base_url: str) -> tuple[Pool, bytes]:
        """The pool for a project's base URL and the path prefix to put before the request's."""
        found = self._origins.get(base_url)
        if found is not None:
            return found
        parts = urllib.parse.urlsplit(base_url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        pool = self.pools.get(key)
        if pool is None:
            proxy = self.egress.proxy_for(scheme, host, port)
            pool = self.pools[key] = Pool(scheme, host, port, self.limits, self._ssl, proxy)
        found = self._origins[base_url] = (pool, parts.path.rstrip("/").encode())
        return found

    async def request(
        self,
        method: str,
        base_url: str,
        target: bytes,
        headers: Mapping[str, str],
        body: Body | None,
        content_length: int | None = None,
        marks: list[tuple[str, float]] | None = None,
    ) -> Response:
        """``target`` is the path (and query) below the base URL, already validated."""
        pool, prefix = self.route(base_url)
        started = time.monotonic()
        response = await send(pool, method, prefix + target, headers, body, content_length, marks)
        total = self.settings.upstream_timeout
        if total:
            response.set_deadline(max(total - (time.monotonic() - started), 0.001))
        return response

    async def warm(self, base_urls: list[str]) -> None:
        """Open POOL_MIN_CONNECTIONS connections to each upstream host now."""
        pools = {id(self.route(u)[0]): self.route(u)[0] for u in base_urls}
        await asyncio.gather(*(p.warm(self.settings.pool_min_connections) for p in pools.values()))

    async def _maintain(self) -> None:
        """Keep POOL_MIN_CONNECTIONS idle connections to every upstream in use."""
        while True:
            await asyncio.sleep(10)
            for pool in list(self.pools.values()):
                try:
                    await pool.warm(self.settings.pool_min_connections)
                except Exception as exc:  # an unreachable upstream: try again later
                    log.debug("keeping connections to %s open failed: %s", pool.host, exc)

    async def close(self) -> None:
        if self._maintainer is not None:
            self._maintainer.cancel()
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        self._origins.clear()


async def read_chunk(response: Response, size: int) -> bytes:
    """The next bytes of the body as soon as any arrive (b"" at the end)."""
    return await response.read(size)
