"""Fake Anthropic and Azure OpenAI upstreams on loopback that record what they receive and
answer in each provider's own shapes (Anthropic's SSE event types, Azure's deployment paths)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.services import free_port

#: what the fake Anthropic reports for every message: input, cache write, cache read, output
USAGE = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 300,
    "output_tokens": 7,
}
WORDS = ("Hello", ", ", "world", "!")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    """A Starlette app run by uvicorn in a thread, keeping every request it was sent."""

    port: int = field(default_factory=free_port)
    requests: list[Seen] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def record(self, request: Request) -> Seen:
        seen = Seen(
            request.method,
            request.url.path,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
            await request.body(),
        )
        self.requests.append(seen)
        return seen

    def app(self) -> Starlette:
        raise NotImplementedError

    def start(self) -> Served:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline, "fake upstream did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(WORDS)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": USAGE,
    }


def stream_events(model: str) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence of a streamed message, as Anthropic sends it: message_start carries
    the input counts, the final message_delta the output count."""
    start = {**message(model), "content": [], "stop_reason": None}
    start["usage"] = {**USAGE, "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for word in WORDS:
        delta = {"type": "text_delta", "text": word}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": USAGE["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


@dataclass
class AnthropicFake(Served):
    """``POST /v1/messages`` (JSON, or SSE with ``"stream": true``), ``POST
    /v1/messages/count_tokens``, ``GET /v1/models``; a model ``fail-<status>`` answers that
    status in Anthropic's error envelope, a streamed model ``cut`` breaks after one delta."""

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"  # as https://api.anthropic.com/v1: the path below is ours

    async def messages(self, request: Request) -> Response:
        seen = await self.record(request)
        body = seen.json()
        model = body.get("model", "")
        if model.startswith("fail-"):
            status = int(model.split("-", 1)[1])
            error = {"type": "api_error", "message": f"upstream says {status}"}
            return JSONResponse({"type": "error", "error": error}, status_code=status)
        if body.get("stream"):

            async def events() -> AsyncIterator[dict[str, str]]:
                for name, data in stream_events(model):
                    yield {"event": name, "data": json.dumps(data)}
                    if model == "cut" and name == "content_block_delta":
                        raise RuntimeError("the upstream died mid-stream")

            return EventSourceResponse(events(), ping=3600)
        return JSONResponse(message(model), headers={"request-id": "req_fake"})

    async def count_tokens(self, request: Request) -> Response:
        await self.record(request)
        return JSONResponse({"input_tokens": 42})

    async def models(self, request: Request) -> Response:
        await self.record(request)
        model = {"type": "model", "id": "claude-fake", "display_name": "Fake", "created_at": ""}
        return JSONResponse({"data": [model], "has_more": False, "first_id": None})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )


@dataclass
class AzureFake(Served):
    """Azure OpenAI's shape: ``/openai/deployments/{name}/chat/completions?api-version=`` with
    the key in ``api-key``; anything else is what Azure says to it (404, or 401 for a missing
    key, 400 for a missing api-version)."""

    key: str = ""
    #: when given, the only deployments and api-version this resource has (others: 404)
    deployments: frozenset[str] = frozenset()
    api_version: str = ""

    @property
    def base_url(self) -> str:
        return self.origin

    async def chat(self, request: Request) -> Response:
        seen = await self.record(request)
        if seen.headers.get("api-key") != self.key or "authorization" in seen.headers:
            return JSONResponse({"error": {"code": "401", "message": "bad key"}}, status_code=401)
        version = seen.query.get("api-version")
        if version is None or (self.api_version and version != self.api_version):
            return JSONResponse({"error": {"code": "404", "message": "no version"}}, 404)
        deployment = request.path_params["deployment"]
        if self.deployments and deployment not in self.deployments:
            error = {"code": "DeploymentNotFound", "message": f"no deployment {deployment}"}
            return JSONResponse({"error": error}, 404)
        return JSONResponse(
            {
                "id": "chatcmpl-azure",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-4o-2024-08-06",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"from {deployment}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            }
        )

    async def other(self, request: Request) -> Response:
        await self.record(request)
        return JSONResponse({"error": {"code": "404", "message": "not here"}}, 404)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/openai/deployments/{deployment}/chat/completions",
                    self.chat,
                    methods=["POST"],
                ),
                Route("/{rest:path}", self.other, methods=["GET", "POST"]),
            ]
        )


CHAT_REPLY = {
    "id": "chatcmpl-x",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-fake",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


@dataclass
class FailingUpstream(Served):
    """An OpenAI-style upstream that fails the way ``mode`` says: ``ok``, ``429`` (with
    Retry-After), ``500`` (before any body byte), ``midstream`` (a 200 stream cut after its
    first event), ``hang`` (never answers), ``drip`` (a 200 stream sent slowly, whole)."""

    name: str = ""
    mode: str = "ok"
    retry_after: str = "120"
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    async def chat(self, request: Request) -> Response:
        seen = await self.record(request)
        mode = self.mode
        if mode == "429":
            return JSONResponse(
                {"error": {"message": "slow down", "type": "rate_limit", "code": "x"}},
                status_code=429,
                headers={"retry-after": self.retry_after},
            )
        if mode == "500":
            return JSONResponse({"error": {"message": "boom", "type": "x", "code": "x"}}, 500)
        if mode == "hang":
            while not self.release.is_set():
                await asyncio.sleep(0.05)
            return JSONResponse(CHAT_REPLY)
        if mode in ("midstream", "drip"):
            stream = json.loads(seen.body).get("stream")
            assert stream, "stream modes answer streaming requests"

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(4):
                    chunk = {**CHAT_REPLY, "object": "chat.completion.chunk", "usage": None}
                    chunk["choices"] = [{"index": 0, "delta": {"content": f"w{i}"}}]
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    if mode == "midstream":
                        raise RuntimeError("the upstream died mid-stream")
                    await asyncio.sleep(0.3)
                yield b"data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")
        return JSONResponse({**CHAT_REPLY, "model": self.name})

    async def files(self, request: Request) -> Response:
        seen = await self.record(request)
        if self.mode == "500":
            return JSONResponse({"error": {"message": "boom", "type": "x", "code": "x"}}, 500)
        return JSONResponse({"id": "file-1", "bytes": len(seen.body), "from": self.name})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/files", self.files, methods=["POST"]),
            ]
        )
