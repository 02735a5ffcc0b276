"""The upstream HTTP client: one pooled aiohttp session per worker, errors mapped to 502/504."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Mapping

import aiohttp
from yarl import URL

from shared.config import Settings
from shared.errors import UpstreamError, UpstreamTimeout

log = logging.getLogger("llm_proxy.upstream")

Body = bytes | AsyncIterable[bytes]


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.pool_max_connections,
            limit_per_host=0,
            force_close=s.disable_connection_pool,
            keepalive_timeout=None if s.disable_connection_pool else 60.0,
            ttl_dns_cache=60,
            enable_cleanup_closed=False,
        )
        timeout = aiohttp.ClientTimeout(
            total=s.upstream_timeout or None,
            connect=s.pool_acquire_timeout + s.upstream_connect_timeout,
            sock_connect=s.upstream_connect_timeout,
            sock_read=s.upstream_read_timeout or None,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,  # bytes pass through as the upstream sent them
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            read_bufsize=max(s.stream_response_chunk_size, 2**16),
        )

    async def warm(self, base_urls: list[str]) -> None:
        """Open POOL_MIN_CONNECTIONS keep-alive connections to each upstream host with cheap
        unauthenticated HEAD requests (their answers are ignored)."""
        hosts = {str(URL(u).origin()): u for u in base_urls}
        count = self.settings.pool_min_connections

        async def one(url: str) -> None:
            try:
                assert self.session is not None
                async with self.session.head(url, allow_redirects=False) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("warming a connection to %s failed: %s", URL(url).origin(), exc)

        await asyncio.gather(*(one(u) for u in hosts.values() for _ in range(count)))

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None
    ) -> aiohttp.ClientResponse:
        """Send the request; return the response once its headers have arrived. The caller
        reads the body with ``read_chunk`` and must ``release()`` or ``close()`` it."""
        assert self.session is not None, "upstream client not started"
        try:
            return await self.session.request(
                method,
                URL(url, encoded=True),  # exactly the validated path: no re-encoding
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ConnectionTimeoutError, aiohttp.SocketTimeoutError, TimeoutError):
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("upstream request failed: %s", type(exc).__name__)
            raise UpstreamError() from None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


async def read_chunk(response: aiohttp.ClientResponse, size: int) -> bytes:
    """The next bytes of the body as soon as any arrive (b"" at the end); upstream failures
    mid-body become UpstreamTimeout/UpstreamError."""
    try:
        return await response.content.read(size)
    except (aiohttp.SocketTimeoutError, TimeoutError):
        raise UpstreamTimeout("The upstream stopped sending.") from None
    except (aiohttp.ClientError, OSError):
        raise UpstreamError("The upstream connection failed mid-response.") from None
