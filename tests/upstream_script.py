"""An upstream on loopback that answers each request with bytes a test scripted, exactly.

A test registers a reply under a model name; a POST whose JSON body names that model gets it:
the given status, content type and body pieces, each written as it is (the chunk boundaries the
proxy sees are the upstream's writes). A reply may hold after some pieces until released, to cut
a stream from the client's side or the proxy's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.services import free_port


@dataclass
class Reply:
    pieces: list[bytes]
    content_type: str = "text/event-stream"
    status: int = 200
    hold_after: int | None = None  # pieces sent before waiting for ``release``
    #: called once every piece has been handed to the server (what the upstream really sent)
    on_sent: Callable[[], None] | None = None


@dataclass
class ScriptedUpstream:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    #: model name -> the reply, made from the decoded request body
    scripts: dict[str, Callable[[Any], Reply]] = field(default_factory=dict)
    bodies: dict[str, list[bytes]] = field(default_factory=dict)  # model -> raw bodies seen
    release: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)  # a reply is holding
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def _answer(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return JSONResponse({"error": {"message": "bad json"}}, status_code=400)
        model = str(body.get("model", ""))
        self.bodies.setdefault(model, []).append(raw)
        script = self.scripts.get(model)
        if script is None:
            return JSONResponse({"error": {"message": f"no script {model}"}}, status_code=404)
        reply = script(body)
        if reply.content_type.startswith("text/event-stream") or reply.hold_after is not None:
            return StreamingResponse(
                self._pieces(reply), status_code=reply.status, media_type=reply.content_type
            )
        return _Whole(b"".join(reply.pieces), reply.status, reply.content_type, reply.on_sent)

    async def _pieces(self, reply: Reply) -> AsyncIterator[bytes]:
        for i, piece in enumerate(reply.pieces):
            if reply.hold_after is not None and i == reply.hold_after:
                self.held.set()
                while not self.release.is_set():
                    await asyncio.sleep(0.01)
            yield piece
        if reply.on_sent is not None:
            reply.on_sent()

    def start(self) -> ScriptedUpstream:
        app = Starlette(routes=[Route("/v1/{rest:path}", self._answer, methods=["POST"])])
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("scripted upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


class _Whole(Response):
    """A reply written in one piece, which says when it has been."""

    def __init__(
        self, body: bytes, status: int, media_type: str, on_sent: Callable[[], None] | None
    ) -> None:
        super().__init__(body, status, media_type=media_type)
        self.on_sent = on_sent

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)
        if self.on_sent is not None:
            self.on_sent()


def chat_chunk(model: str, content: str | None, usage: dict[str, int] | None = None) -> bytes:
    """One chat.completion.chunk as JSON: a content delta, or (content None) a usage-only one."""
    obj: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": model}
    if content is None:
        obj["choices"] = []
        obj["usage"] = usage
    else:
        obj["choices"] = [{"index": 0, "delta": {"content": content}}]
    return json.dumps(obj, separators=(",", ":")).encode()


def asks_usage(body: Any) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
