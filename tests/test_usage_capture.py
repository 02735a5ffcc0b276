"""Usage is recorded for every request the upstream billed, through the real server (gunicorn,
2 workers) on the embedded default (SQLite) and on Postgres, against a scripted upstream: SSE in
every line-ending style reaches the client byte for byte, include_usage cannot be turned off,
large bodies either way keep their usage, and what cannot be known is estimated and flagged."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shared.config import Settings
from shared.crypto import new_key
from shared.store import make_store
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision, run_async
from tests.services import create_database, drop_database, free_port, require
from tests.upstream_script import Reply, ScriptedUpstream, asks_usage, chat_chunk

USAGE = {"prompt_tokens": 123, "completion_tokens": 45, "total_tokens": 168}
CHAT = "/v1/chat/completions"


@dataclass
class Target:
    name: str
    proxy: ProxyProcess
    creds: Provisioned
    env: dict[str, str]
    cwd: Path

    def __repr__(self) -> str:  # keeps the token out of test reports
        return f"Target({self.name})"

    def headers(self, request_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds.token}", "X-Request-ID": request_id}

    def rows(self) -> list[dict[str, Any]]:
        return run_async(_rows(self.env, self.cwd, self.creds.token_id))

    def row(self, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The request_events row of this request, once its final record is in."""
        deadline = time.monotonic() + timeout
        while True:
            for row in self.rows():
                if row["request_id"] == request_id and row["phase"] == "final":
                    return row
            assert time.monotonic() < deadline, f"no event for {request_id}"
            time.sleep(0.05)


async def _rows(env: dict[str, str], cwd: Path, token_id: str) -> list[dict[str, Any]]:
    here = os.getcwd()
    os.chdir(cwd)
    try:
        store = make_store(Settings.from_env(env))
        await store.open()
        try:
            async with store.transaction(readonly=True) as tx:
                return await tx.fetchall(
                    "SELECT * FROM request_events WHERE token_id = %s", (token_id,)
                )
        finally:
            await store.close()
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


def _env(kind: str) -> tuple[dict[str, str], str | None]:
    if kind == "embedded":
        return dict(UNLIMITED), None
    require("PostgreSQL", "127.0.0.1", 5432)
    url = create_database()
    env = {**UNLIMITED, "DB_DRIVER": "postgres", "DATABASE_URL": url, "ENCRYPTION_KEY": new_key()}
    return env, url


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def target(
    request: pytest.FixtureRequest,
    upstream: ScriptedUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Target]:
    cwd = tmp_path_factory.mktemp(request.param)
    env, db_url = _env(request.param)
    creds = provision(env, cwd, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=2).start()
    yield Target(request.param, proxy, creds, env, cwd)
    proxy.stop()
    if db_url:
        drop_database(db_url)


def sse_stream(model: str, ending: bytes, *, usage: bool, contents: int = 3) -> list[bytes]:
    """An OpenAI chat stream with ``ending`` as every line end; the usage chunk when asked."""
    pieces = [b"data: " + chat_chunk(model, f"w{i}") + ending * 2 for i in range(contents)]
    if usage:
        pieces.append(b"data: " + chat_chunk(model, None, USAGE) + ending * 2)
    pieces.append(b"data: [DONE]" + ending * 2)
    return pieces


def stream_chat(target: Target, request_id: str, body: dict[str, Any]) -> tuple[int, bytes]:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", target.proxy.url + CHAT, json=body, headers=target.headers(request_id)
        ) as response,
    ):
        return response.status_code, response.read()


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
def test_every_line_ending_reaches_the_client_whole_and_usage_is_recorded(
    target: Target, upstream: ScriptedUpstream, ending: bytes
) -> None:
    model = f"ends-{ending.hex()}-{target.name}"
    upstream.scripts[model] = lambda body: Reply(sse_stream(model, ending, usage=asks_usage(body)))
    rid = f"ends-{ending.hex()}-{target.name}"
    status, got = stream_chat(target, rid, {"model": model, "stream": True, "messages": []})
    assert status == 200
    # exactly the upstream's bytes, less the usage chunk the proxy asked for
    assert got == b"".join(sse_stream(model, ending, usage=False))
    row = target.row(rid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (123, 45, 168)
    assert (row["model"], row["status"], row["error"]) == (model, 200, "")


def test_include_usage_false_is_overridden_and_the_usage_chunk_stripped(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"optout-{target.name}"
    upstream.scripts[model] = lambda body: Reply(sse_stream(model, b"\n", usage=asks_usage(body)))
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": False},
        "messages": [{"role": "user", "content": "hi"}],
    }
    status, got = stream_chat(target, f"optout-{target.name}", body)
    assert status == 200
    assert got == b"".join(sse_stream(model, b"\n", usage=False))
    assert asks_usage(json.loads(upstream.bodies[model][-1]))
    row = target.row(f"optout-{target.name}")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (123, 45)


def test_a_json_answer_over_a_mebibyte_keeps_its_usage(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"bigjson-{target.name}"
    vectors = [{"object": "embedding", "index": i, "embedding": [0.5] * 512} for i in range(500)]
    answer = json.dumps(
        {"object": "list", "data": vectors, "model": model, "usage": USAGE}
    ).encode()
    assert len(answer) > 1 << 20
    half = len(answer) // 2
    upstream.scripts[model] = lambda body: Reply(
        [answer[:half], answer[half:]], content_type="application/json"
    )
    rid = f"bigjson-{target.name}"
    response = httpx.post(
        target.proxy.url + "/v1/embeddings",
        json={"model": model, "input": "x"},
        headers=target.headers(rid),
        timeout=30,
    )
    assert response.status_code == 200 and response.content == answer
    row = target.row(rid)
    assert (row["model"], row["prompt_tokens"], row["total_tokens"]) == (model, 123, 168)


def test_a_streaming_request_body_over_a_mebibyte_still_gets_usage(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"bigbody-{target.name}"
    upstream.scripts[model] = lambda body: Reply(sse_stream(model, b"\n", usage=asks_usage(body)))
    body = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "long context " * 100_000}],
    }
    rid = f"bigbody-{target.name}"
    status, got = stream_chat(target, rid, body)
    assert status == 200
    assert len(upstream.bodies[model][-1]) > 1 << 20
    assert asks_usage(json.loads(upstream.bodies[model][-1]))
    assert got == b"".join(sse_stream(model, b"\n", usage=False))
    row = target.row(rid)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (123, 45)


def test_a_stream_the_client_aborts_is_flagged_and_estimated(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"abort-{target.name}"
    upstream.release.clear()
    upstream.held.clear()
    upstream.scripts[model] = lambda body: Reply(
        sse_stream(model, b"\n", usage=True, contents=6), hold_after=3
    )
    rid = f"abort-{target.name}"
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "x" * 400}]}
    try:
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST", target.proxy.url + CHAT, json=body, headers=target.headers(rid)
            ) as response,
        ):
            seen = b""
            for piece in response.iter_raw():
                seen += piece
                if seen.count(b"\n\n") >= 3:
                    break
    finally:
        upstream.release.set()
    row = target.row(rid)
    assert row["error"] == "client_disconnected"
    assert row["usage_source"] == "estimated"
    assert row["completion_tokens"] == 3  # one per content chunk delivered
    assert 90 <= row["prompt_tokens"] <= 130  # 400 characters of prompt, about 4 a token
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]


def test_an_upstream_stream_without_usage_is_estimated_not_zero(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"nousage-{target.name}"
    upstream.scripts[model] = lambda body: Reply(sse_stream(model, b"\n", usage=False))
    rid = f"nousage-{target.name}"
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "y" * 80}]}
    status, got = stream_chat(target, rid, body)
    assert status == 200 and got == b"".join(sse_stream(model, b"\n", usage=False))
    row = target.row(rid)
    assert (row["usage_source"], row["completion_tokens"], row["error"]) == ("estimated", 3, "")
    assert row["prompt_tokens"] > 0


def test_absurd_usage_is_clamped_flagged_and_recording_goes_on(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"absurd-{target.name}"
    huge = {"prompt_tokens": 2**64 - 1, "completion_tokens": -5, "total_tokens": 2**64 + 3}
    upstream.scripts[model] = lambda body: Reply(
        [json.dumps({"model": model, "choices": [], "usage": huge}).encode()],
        content_type="application/json",
    )
    rid = f"absurd-{target.name}"
    body = {"model": model, "messages": []}
    response = httpx.post(target.proxy.url + CHAT, json=body, headers=target.headers(rid))
    assert response.status_code == 200
    row = target.row(rid)
    assert row["usage_source"] == "clamped"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (10**9, 0)
    assert row["total_tokens"] == 10**9
    # the same worker goes on recording
    for i in range(4):
        ok = httpx.post(target.proxy.url + CHAT, json=body, headers=target.headers(f"{rid}-{i}"))
        assert ok.status_code == 200
        assert target.row(f"{rid}-{i}")["usage_source"] == "clamped"


def test_a_deeply_nested_streaming_body_is_forwarded_untouched(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"deep-{target.name}"
    upstream.scripts[model] = lambda body: Reply(sse_stream(model, b"\n", usage=asks_usage(body)))
    nested = "[" * 300 + "]" * 300
    raw = f'{{"model": "{model}", "stream": true, "messages": [], "x": {nested}}}'.encode()
    rid = f"deep-{target.name}"
    headers = {**target.headers(rid), "content-type": "application/json"}
    response = httpx.post(target.proxy.url + CHAT, content=raw, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert upstream.bodies[model][-1] == raw
    assert response.content == b"".join(sse_stream(model, b"\n", usage=False))
    assert target.row(rid)["usage_source"] == "estimated"


def test_a_streamed_responses_api_answer_records_response_completed_usage(
    target: Target, upstream: ScriptedUpstream
) -> None:
    model = f"responses-{target.name}"
    completed = {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "model": model,
            "usage": {"input_tokens": 31, "output_tokens": 8, "total_tokens": 39},
        },
    }
    pieces = [
        b'event: response.created\r\ndata: {"type":"response.created","response":{"model":"'
        + model.encode()
        + b'"}}\r\n\r\n',
        b'event: response.output_text.delta\r\ndata: {"type":"response.output_text.delta",'
        b'"delta":"hi"}\r\n\r\n',
        b"event: response.completed\r\ndata: " + json.dumps(completed).encode() + b"\r\n\r\n",
    ]
    upstream.scripts[model] = lambda body: Reply(pieces)
    rid = f"responses-{target.name}"
    response = httpx.post(
        target.proxy.url + "/v1/responses",
        json={"model": model, "input": "hi", "stream": True},
        headers=target.headers(rid),
        timeout=30,
    )
    assert response.status_code == 200 and response.content == b"".join(pieces)
    row = target.row(rid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (31, 8, "")


# --- any line ends, any chunk boundaries, through the real proxy ---

endings = st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1, max_size=3)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    contents=st.lists(st.text("abc xyz", max_size=8), min_size=1, max_size=5),
    ends=endings,
    cuts=st.lists(st.integers(1, 4000), max_size=8),
    client_asks=st.booleans(),
)
def test_any_stream_reaches_the_client_less_exactly_the_injected_usage_chunk(
    target: Target,
    upstream: ScriptedUpstream,
    contents: list[str],
    ends: list[bytes],
    cuts: list[int],
    client_asks: bool,
) -> None:
    model = f"prop-{uuid.uuid4().hex[:8]}"
    usage = {
        "prompt_tokens": len(contents) * 7,
        "completion_tokens": len(contents),
        "total_tokens": 8 * len(contents),
    }

    def events(with_usage: bool) -> list[bytes]:
        out, i = [], 0
        chunks = [chat_chunk(model, c) for c in contents]
        chunks.append(chat_chunk(model, None, usage))
        for data in [*chunks, b"[DONE]"]:
            first, second = ends[i % len(ends)], ends[(i + 1) % len(ends)]
            if first == b"\r" and second == b"\n":  # that pair is one CRLF
                second = b"\r\n"
            out.append(b"data: " + data + first + second)
            i += 2
        if not with_usage:
            del out[-2]  # the usage chunk, exactly
        return out

    def reply(body: Any) -> Reply:
        stream = b"".join(events(asks_usage(body)))
        bounds = sorted({c % len(stream) for c in cuts} | {0, len(stream)})
        return Reply([stream[a:b] for a, b in itertools.pairwise(bounds)])

    upstream.scripts[model] = reply
    body: dict[str, Any] = {"model": model, "stream": True, "messages": []}
    if client_asks:
        body["stream_options"] = {"include_usage": True}
    status, got = stream_chat(target, model, body)
    assert status == 200
    assert got == b"".join(events(client_asks))
    row = target.row(model)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert row["usage_source"] == ""


# --- a real sse-starlette upstream, the official openai SDK as the client ---


def sse_starlette_app() -> Starlette:
    async def chat(request: Request) -> EventSourceResponse:
        body = await request.json()

        async def events() -> AsyncIterator[dict[str, str]]:
            for word in ("Hello", " from", " sse-starlette"):
                yield {"data": chat_chunk(body["model"], word).decode()}
            if asks_usage(body):
                yield {"data": chat_chunk(body["model"], None, USAGE).decode()}
            yield {"data": "[DONE]"}

        return EventSourceResponse(events())  # its default: every line ends with CRLF

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def starlette_upstream() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(sse_starlette_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "sse-starlette upstream did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("client_asks", [False, True], ids=["usage-not-asked", "usage-asked"])
def test_sse_starlette_upstream_through_the_proxy_to_the_openai_sdk(
    target: Target, starlette_upstream: str, client_asks: bool
) -> None:
    creds = provision(
        target.env, target.cwd, starlette_upstream, name=f"sse-starlette-{client_asks}"
    )
    client = openai.OpenAI(base_url=f"{target.proxy.url}/v1", api_key=creds.token, max_retries=0)
    rid = f"sse-starlette-{client_asks}-{target.name}"
    options: Any = {"include_usage": True} if client_asks else openai.NOT_GIVEN
    stream = client.chat.completions.create(
        model="sse-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options=options,
        extra_headers={"X-Request-ID": rid},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from sse-starlette"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if client_asks:
        assert [u.usage.total_tokens for u in usage_chunks if u.usage] == [168]
    else:
        assert usage_chunks == []
    deadline = time.monotonic() + 20
    while True:
        rows = run_async(_rows(target.env, target.cwd, creds.token_id))
        if rows and rows[0]["phase"] == "final":
            break
        assert time.monotonic() < deadline, "no final event recorded"
        time.sleep(0.05)
    (row,) = rows
    assert (row["request_id"], row["prompt_tokens"], row["completion_tokens"]) == (rid, 123, 45)
    assert (row["model"], row["usage_source"], row["status"]) == ("sse-model", "", 200)


# --- cut streams are never recorded as complete ---


def test_a_stream_cut_by_the_shutdown_grace_is_marked_interrupted_after_the_full_grace(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    model = "grace-cut"
    upstream.release.clear()
    upstream.held.clear()
    upstream.scripts[model] = lambda body: Reply(
        sse_stream(model, b"\n", usage=asks_usage(body), contents=5), hold_after=2
    )
    env = {"SHUTDOWN_GRACE_PERIOD": "2.5s"}
    creds = provision(env, tmp_path, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    target = Target("grace", proxy, creds, env, tmp_path)
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "q" * 40}]}
    try:
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST", proxy.url + CHAT, json=body, headers=target.headers("grace-1")
            ) as response,
        ):
            pieces = response.iter_raw()
            seen = b""
            while seen.count(b"\n\n") < 2:
                seen += next(pieces)
            assert upstream.held.wait(20)
            signalled = time.monotonic()
            proxy.signal(signal.SIGTERM)
            with pytest.raises(httpx.RemoteProtocolError):
                for piece in pieces:
                    seen += piece
            cut_after = time.monotonic() - signalled
        assert proxy.proc is not None and proxy.proc.wait(timeout=60) == 0
    finally:
        upstream.release.set()
        proxy.stop()
    assert cut_after >= 2.5  # the whole grace, not a second less
    row = target.row("grace-1")
    assert (row["status"], row["error"], row["usage_source"]) == (200, "interrupted", "estimated")
    assert row["completion_tokens"] == 2 and row["prompt_tokens"] == 11
