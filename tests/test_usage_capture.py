"""Usage is recorded for every request the upstream billed, through the real server (gunicorn,
2 workers) on the embedded default (SQLite) and on Postgres, against a scripted upstream: SSE in
every line-ending style reaches the client byte for byte, include_usage cannot be turned off,
large bodies either way keep their usage, and what cannot be known is estimated and flagged."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import Settings
from shared.crypto import new_key
from shared.store import make_store
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision, run_async
from tests.services import create_database, drop_database, require
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

    def headers(self, request_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds.token}", "X-Request-ID": request_id}

    def rows(self) -> list[dict[str, Any]]:
        return run_async(_rows(self.env, self.cwd, self.creds.token_id))

    def row(self, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The request_events row of this request, once recorded."""
        deadline = time.monotonic() + timeout
        while True:
            for row in self.rows():
                if row["request_id"] == request_id:
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
