"""A fake OpenAI-compatible upstream on loopback that records what it receives.

Behaviour is chosen by the request itself, since the proxy forwards bodies and query strings
unchanged: the ``model`` field of a JSON body (``fail-<status>``, ``slow-<seconds>``,
``hold`` …) or the ``fake`` query parameter for GET requests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.services import free_port

MODELS = {"object": "list", "data": [{"id": "gpt-fake", "object": "model", "owned_by": "test"}]}


@dataclass
class Seen:
    method: str
    path: str
    raw_path: bytes
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    requests: list[Seen] = field(default_factory=list)
    #: set by a test to let a held stream continue (see model "hold")
    release: threading.Event = field(default_factory=threading.Event)
    #: set by the fake when a stream it was sending was cut by the other side
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    stream_finished: threading.Event = field(default_factory=threading.Event)
    stream_chunks: int = 5
    stream_gap: float = 0.0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.release.clear()
        self.stream_cancelled.clear()
        self.stream_finished.clear()

    # --- the app ---

    async def _record(self, request: Request) -> bytes:
        body = await request.body()
        self.requests.append(
            Seen(
                method=request.method,
                path=request.url.path,
                raw_path=request.scope.get("raw_path", b""),
                query=request.url.query,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        return body

    async def chat(self, request: Request) -> Response:
        raw = await self._record(request)
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse(
                {"error": {"message": "bad json", "type": "invalid_request_error", "code": None}},
                status_code=400,
            )
        model = str(body.get("model", "gpt-fake"))
        early = await _misbehave(model)
        if early is not None:
            return early
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._stream(model, usage), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
        )

    async def _stream(self, model: str, usage: bool) -> AsyncIterator[bytes]:
        try:
            for i in range(self.stream_chunks):
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": f"t{i}"}}],
                }
                if usage:
                    chunk["usage"] = None
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                if model == "hold" and i == 0:
                    while not self.release.is_set():
                        await asyncio.sleep(0.01)
                if self.stream_gap:
                    await asyncio.sleep(self.stream_gap)
            if usage:
                final = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
                }
                yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            self.stream_finished.set()
        except (asyncio.CancelledError, GeneratorExit):
            self.stream_cancelled.set()
            raise

    async def embeddings(self, request: Request) -> Response:
        raw = await self._record(request)
        body = json.loads(raw or b"{}")
        early = await _misbehave(str(body.get("model", "")))
        if early is not None:
            return early
        return JSONResponse(
            {
                "object": "list",
                "model": body.get("model", "emb-fake"),
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )

    async def models(self, request: Request) -> Response:
        await self._record(request)
        fake = request.query_params.get("fake", "")
        early = await _misbehave(fake)
        if early is not None:
            return early
        if fake == "redirect":
            return Response(status_code=302, headers={"location": "http://127.0.0.1:9/v1/x"})
        if fake == "cookie":
            return JSONResponse(MODELS, headers={"set-cookie": "session=abc", "x-upstream": "yes"})
        if fake in ("no-store", "private", "no-cache", "max-age=1"):
            return JSONResponse(MODELS, headers={"cache-control": fake})
        if fake == "big":
            return JSONResponse({**MODELS, "padding": "x" * 5000})
        if fake == "etag":
            if request.headers.get("if-none-match") == '"v1"':
                return Response(status_code=304, headers={"etag": '"v1"'})
            return JSONResponse(MODELS, headers={"etag": '"v1"', "cache-control": "max-age=60"})
        return JSONResponse(MODELS)

    async def anything(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"path": request.url.path})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET", "HEAD"]),
                Route("/v1/{rest:path}", self.anything, methods=["GET", "POST", "DELETE", "HEAD"]),
            ]
        )

    # --- running ---

    def start(self) -> FakeUpstream:
        config = uvicorn.Config(
            self.app(), host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


async def _misbehave(model: str) -> Response | None:
    """``fail-<status>``: that status with an OpenAI-style body; ``slow-<s>``: answer late."""
    if model.startswith("fail-"):
        status = int(model.split("-", 1)[1])
        return JSONResponse(
            {"error": {"message": f"upstream says {status}", "type": "upstream_test", "code": "x"}},
            status_code=status,
            headers={"x-upstream-error": "yes"},
        )
    if model.startswith("slow-"):
        await asyncio.sleep(float(model.split("-", 1)[1]))
    return None


def running_fake() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


def events_of(fake: FakeUpstream, path: str) -> list[Seen]:
    return [r for r in fake.requests if r.path == path]


def as_json(seen: Seen) -> Any:
    return json.loads(seen.body)
