"""Driving HttpCache the way the request pipeline does, against a counting fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from proxy.cache import HttpCache, Served

Header = tuple[bytes, bytes]
UpstreamCall = Callable[
    [str, str, list[Header], bytes], Awaitable[tuple[int, list[Header], AsyncIterator[bytes]]]
]


def raw(headers: dict[str, str] | Sequence[tuple[str, str]] | None) -> list[Header]:
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items]


async def _chunks(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@dataclass
class Upstream:
    """The outside world: answers every call with the configured response, and counts calls."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    chunks: Sequence[bytes] = (b'{"object":"list","data":[]}',)
    calls: int = 0
    seen: list[list[Header]] = field(default_factory=list)
    not_modified_if: str | None = None  # answer 304 when If-None-Match carries this

    async def __call__(
        self, method: str, path: str, headers: list[Header], body: bytes
    ) -> tuple[int, list[Header], AsyncIterator[bytes]]:
        self.calls += 1
        self.seen.append(headers)
        inm = dict(headers).get(b"if-none-match")
        if self.not_modified_if is not None and inm == self.not_modified_if.encode():
            kept = {k: v for k, v in self.headers.items() if k.lower() != "content-type"}
            return 304, raw(kept), _chunks(())
        return self.status, raw(self.headers), _chunks(self.chunks)


@dataclass
class Reply:
    status: int
    headers: list[Header]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower().encode()]
        return found[-1].decode("latin-1") if found else None

    @property
    def cache(self) -> str | None:
        return self.header("x-proxy-cache")

    @property
    def cache_status(self) -> str | None:
        return self.header("cache-status")


def _reply(served: Served) -> Reply:
    return Reply(served.status, served.headers, served.body)


async def request(
    cache: HttpCache,
    upstream: UpstreamCall,
    *,
    project: str = "p1",
    method: str = "GET",
    path: str = "/v1/models",
    query: bytes = b"",
    headers: dict[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Reply:
    """One request through the cache, in the order docs/caching.md gives the pipeline."""
    request_headers = raw(headers)
    plan = cache.prepare(project, method, path, query, request_headers, body)
    served = await cache.lookup(plan)
    if served is not None:
        return _reply(served)
    async with cache.fill(plan) as fill:
        if fill.served is not None:
            return _reply(fill.served)
        forwarded = request_headers
        if fill.conditional_headers:
            conditional = (b"if-none-match", b"if-modified-since")
            forwarded = [h for h in request_headers if h[0] not in conditional]
            forwarded += list(fill.conditional_headers)
        status, response_headers, chunks = await upstream(method, path, forwarded, body)
        if status == 304 and fill.revalidating:
            return _reply(await fill.not_modified(response_headers))
        extra = fill.start(status, response_headers)
        received = []
        async for chunk in chunks:
            fill.feed(chunk)
            received.append(chunk)
        await fill.finish()
        return Reply(status, [*response_headers, *extra], b"".join(received))
