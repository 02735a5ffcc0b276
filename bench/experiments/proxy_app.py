"""Minimal reverse proxies for the client study: one app shape x one upstream client, chosen by env.

    EXP_APP       starlette | asgi | trivial-starlette | trivial-asgi
    EXP_CLIENT    aiohttp | httpx | raw            (ignored by the trivial apps)
    EXP_UPSTREAM  http://127.0.0.1:PORT            (the fake upstream)

Run: EXP_APP=asgi EXP_CLIENT=raw EXP_UPSTREAM=http://127.0.0.1:9100 \
     gunicorn -w 2 -k uvicorn_worker.UvicornWorker -b 127.0.0.1:9200 bench.experiments.proxy_app:app

Every variant forwards GET/POST /v1/{path} with the body read whole, swaps Authorization for an
upstream key, returns a Content-Length response in one piece and streams everything else (SSE)
chunk by chunk. The trivial apps answer a fixed completion with no upstream: the server stack alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

Headers = list[tuple[bytes, bytes]]
# (status, response headers to pass on, whole body or None, chunk iterator or None)
Result = tuple[int, Headers, bytes | None, AsyncIterator[bytes] | None]
Forward = Callable[[str, str, bytes, bytes], Awaitable[Result]]

UPSTREAM = os.environ.get("EXP_UPSTREAM", "http://127.0.0.1:9100")
UPSTREAM_KEY = b"Bearer sk-upstream-fake"
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade")
)
FIXED = (
    b'{"id":"chatcmpl-fake","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello from the fake upstream."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":19,"completion_tokens":7,"total_tokens":26}}'
)


def pass_on(headers: Any) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]


def has_length(headers: Headers) -> bool:
    return any(k.lower() == b"content-length" for k, _ in headers)


# --- upstream clients: each returns an async context manager yielding a Forward ------------------


@contextlib.asynccontextmanager
async def aiohttp_client() -> AsyncIterator[Forward]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
    session = aiohttp.ClientSession(
        base_url=UPSTREAM,
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    )

    async def forward(method: str, path: str, content_type: bytes, body: bytes) -> Result:
        headers = {"Authorization": UPSTREAM_KEY.decode()}
        if content_type:
            headers["Content-Type"] = content_type.decode()
        resp = await session.request(method, path, data=body or None, headers=headers)
        headers_out = pass_on(resp.raw_headers)
        if resp.content_length is not None:
            data = await resp.read()
            resp.release()
            return resp.status, headers_out, data, None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            finally:
                resp.release()

        return resp.status, headers_out, None, chunks()

    try:
        yield forward
    finally:
        await session.close()


@contextlib.asynccontextmanager
async def httpx_client() -> AsyncIterator[Forward]:
    import httpx

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    client = httpx.AsyncClient(base_url=UPSTREAM, limits=limits, timeout=30)

    async def forward(method: str, path: str, content_type: bytes, body: bytes) -> Result:
        headers = [(b"authorization", UPSTREAM_KEY)]
        if content_type:
            headers.append((b"content-type", content_type))
        request = client.build_request(method, path, content=body, headers=headers)
        resp = await client.send(request, stream=True)
        headers_out = pass_on(resp.headers.raw)
        if "content-length" in resp.headers:
            data = await resp.aread()
            await resp.aclose()
            return resp.status_code, headers_out, data, None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return resp.status_code, headers_out, None, chunks()

    try:
        yield forward
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def raw_client() -> AsyncIterator[Forward]:
    from bench.experiments.rawclient import Pool

    url = urlsplit(UPSTREAM)
    pool = Pool(url.hostname or "127.0.0.1", url.port or 80)

    async def forward(method: str, path: str, content_type: bytes, body: bytes) -> Result:
        headers = [(b"authorization", UPSTREAM_KEY)]
        if content_type:
            headers.append((b"content-type", content_type))
        resp = await pool.request(method.encode(), path.encode(), headers, body)
        headers_out = pass_on(resp.headers)
        if has_length(resp.headers):
            return resp.status, headers_out, await resp.read(), None
        return resp.status, headers_out, None, resp.iter_chunks()

    try:
        yield forward
    finally:
        pool.close()


CLIENTS = {"aiohttp": aiohttp_client, "httpx": httpx_client, "raw": raw_client}


# --- app shapes -----------------------------------------------------------------------------------


def starlette_app(client: Callable[[], contextlib.AbstractAsyncContextManager[Forward]]) -> Any:
    state: dict[str, Forward] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client() as forward:
            state["forward"] = forward
            yield

    async def proxy(request: Request) -> Response:
        body = await request.body()
        status, headers, data, chunks = await state["forward"](
            request.method,
            request.url.path,
            request.headers.get("content-type", "").encode(),
            body,
        )
        content_type = next((v.decode() for k, v in headers if k.lower() == b"content-type"), None)
        if data is not None:
            return Response(data, status, media_type=content_type)
        assert chunks is not None
        return StreamingResponse(
            chunks, status, headers={"cache-control": "no-cache"}, media_type=content_type
        )

    routes = [Route("/v1/{path:path}", proxy, methods=["GET", "POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def asgi_app(client: Callable[[], contextlib.AbstractAsyncContextManager[Forward]]) -> Any:
    """No framework: check the path, read the body, forward, send the upstream's headers as-is."""
    state: dict[str, Any] = {}
    not_found = {
        "type": "http.response.start",
        "status": 404,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"22")],
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        path: str = scope["path"]
        if not path.startswith("/v1/") or scope["method"] not in ("GET", "POST"):
            await send(not_found)
            await send({"type": "http.response.body", "body": b'{"error":"not found"}\n'})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        content_type = b""
        for k, v in scope["headers"]:
            if k == b"content-type":
                content_type = v
        status, headers, data, chunks = await state["forward"](
            scope["method"], path, content_type, body
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if data is not None:
            await send({"type": "http.response.body", "body": data})
            return
        assert chunks is not None
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def lifespan(receive: Any, send: Any) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await receive()  # lifespan.startup
            state["forward"] = await stack.enter_async_context(client())
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    return app


def trivial_starlette_app() -> Any:
    async def fixed(request: Request) -> Response:
        await request.body()
        return Response(FIXED, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", fixed, methods=["POST"])])


def trivial_asgi_app() -> Any:
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(FIXED)),
        ],
    }
    body = {"type": "http.response.body", "body": FIXED}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send(start)
        await send(body)

    return app


def make_app() -> Any:
    shape = os.environ.get("EXP_APP", "starlette")
    if shape == "trivial-starlette":
        return trivial_starlette_app()
    if shape == "trivial-asgi":
        return trivial_asgi_app()
    client = CLIENTS[os.environ.get("EXP_CLIENT", "aiohttp")]
    return asgi_app(client) if shape == "asgi" else starlette_app(client)


app = make_app()
