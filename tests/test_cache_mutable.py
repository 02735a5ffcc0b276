"""Mutable API resources are never answered stale from the cache: the OpenAI SDK against a
stateful upstream, through the real proxy with its default (in-memory) cache."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.services import free_port

ENV = {**UNLIMITED, "ALLOWED_ENDPOINTS": "/v1/models,/v1/files,/v1/batches,/v1/responses"}


class Resources:
    """An upstream whose files, batches and background responses change between calls."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls: list[str] = []
        self.files: list[dict[str, object]] = []
        self.batch_status = "validating"
        self.polls = itertools.count()
        self._server: uvicorn.Server | None = None

    async def list_files(self, request: Request) -> JSONResponse:
        self.calls.append("GET /v1/files")
        return JSONResponse({"object": "list", "data": self.files, "has_more": False})

    async def upload(self, request: Request) -> JSONResponse:
        body = await request.body()  # multipart; its size is all this fake keeps
        n = len(self.files) + 1
        entry = {
            "id": f"file-{n}",
            "object": "file",
            "bytes": len(body),
            "created_at": 1_700_000_000 + n,
            "filename": "a.jsonl",
            "purpose": "batch",
            "status": "processed",
        }
        self.files.append(entry)
        return JSONResponse(entry)

    def _batch(self) -> dict[str, object]:
        return {
            "id": "batch_1",
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-1",
            "completion_window": "24h",
            "status": self.batch_status,
            "created_at": 1_700_000_000,
        }

    async def get_batch(self, request: Request) -> JSONResponse:
        self.calls.append("GET /v1/batches/batch_1")
        return JSONResponse(self._batch())

    async def cancel_batch(self, request: Request) -> JSONResponse:
        self.batch_status = "cancelling"
        return JSONResponse(self._batch())

    async def get_response(self, request: Request) -> JSONResponse:
        self.calls.append("GET /v1/responses/resp_1")
        status = ("queued", "in_progress", "completed")[min(next(self.polls), 2)]
        return JSONResponse(
            {
                "id": "resp_1",
                "object": "response",
                "created_at": 1_700_000_000,
                "status": status,
                "model": "gpt-fake",
                "output": [],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
            }
        )

    async def model(self, request: Request) -> JSONResponse:
        self.calls.append("GET /v1/models/gpt-fake")
        return JSONResponse({"id": "gpt-fake", "object": "model", "created": 1, "owned_by": "t"})

    async def marked(self, request: Request) -> JSONResponse:
        # The upstream itself says this answer may be reused for a minute.
        self.calls.append("GET /v1/files/file-1")
        headers = {"cache-control": "public, max-age=60"}
        return JSONResponse(self.files[0] if self.files else {}, headers=headers)

    def start(self) -> Resources:
        app = Starlette(
            routes=[
                Route("/v1/files", self.list_files, methods=["GET"]),
                Route("/v1/files", self.upload, methods=["POST"]),
                Route("/v1/files/file-1", self.marked, methods=["GET"]),
                Route("/v1/batches/batch_1", self.get_batch, methods=["GET"]),
                Route("/v1/batches/batch_1/cancel", self.cancel_batch, methods=["POST"]),
                Route("/v1/responses/resp_1", self.get_response, methods=["GET"]),
                Route("/v1/models/gpt-fake", self.model, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "upstream did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


@pytest.fixture(scope="module")
def upstream() -> Iterator[Resources]:
    resources = Resources().start()
    yield resources
    resources.stop()


@pytest.fixture(scope="module")
def client(
    upstream: Resources, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    cwd = tmp_path_factory.mktemp("mutable")
    creds: Provisioned = provision(ENV, cwd, f"http://127.0.0.1:{upstream.port}/v1")
    proxy = ProxyProcess(env=ENV, cwd=cwd, workers=1).start()
    sdk = openai.OpenAI(api_key=creds.token, base_url=f"{proxy.url}/v1", max_retries=0)
    yield sdk
    sdk.close()
    proxy.stop()


def test_file_list_shows_an_upload_made_after_it_was_read(
    client: openai.OpenAI, upstream: Resources
) -> None:
    assert client.files.list().data == []
    client.files.create(file=("a.jsonl", b'{"x": 1}\n'), purpose="batch")
    listed = client.files.with_raw_response.list()
    assert [f.id for f in listed.parse().data] == ["file-1"]
    assert listed.headers["x-proxy-cache"] == "miss"
    assert "detail=mutable" in listed.headers["cache-status"]


def test_batch_status_after_a_cancel_is_fresh(client: openai.OpenAI, upstream: Resources) -> None:
    assert client.batches.retrieve("batch_1").status == "validating"
    client.batches.cancel("batch_1")
    assert client.batches.retrieve("batch_1").status == "cancelling"


def test_polling_a_background_response_sees_it_progress(
    client: openai.OpenAI, upstream: Resources
) -> None:
    seen = [client.responses.retrieve("resp_1").status for _ in range(3)]
    assert seen == ["queued", "in_progress", "completed"]
    assert upstream.calls.count("GET /v1/responses/resp_1") == 3


def test_models_and_what_the_upstream_marks_cacheable_are_reused(
    client: openai.OpenAI, upstream: Resources
) -> None:
    for _ in range(2):
        model = client.models.with_raw_response.retrieve("gpt-fake")
    assert model.headers["x-proxy-cache"] == "hit"
    assert upstream.calls.count("GET /v1/models/gpt-fake") == 1
    for _ in range(2):
        marked = client.files.with_raw_response.retrieve("file-1")
    assert marked.headers["x-proxy-cache"] == "hit"
    assert upstream.calls.count("GET /v1/files/file-1") == 1


def test_a_client_may_still_opt_a_get_in(client: openai.OpenAI, upstream: Resources) -> None:
    before = upstream.calls.count("GET /v1/batches/batch_1")
    opt_in = {"X-Proxy-Cache-TTL": "60"}
    answers = [
        client.batches.with_raw_response.retrieve("batch_1", extra_headers=opt_in) for _ in range(2)
    ]
    assert [a.headers["x-proxy-cache"] for a in answers] == ["miss", "hit"]
    assert upstream.calls.count("GET /v1/batches/batch_1") == before + 1
    # A plain read of the same batch is not answered from the entry another client opted in.
    plain = client.batches.with_raw_response.retrieve("batch_1")
    assert plain.headers["x-proxy-cache"] == "miss"
    assert upstream.calls.count("GET /v1/batches/batch_1") == before + 2
