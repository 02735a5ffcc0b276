"""Embeddings batching through the real server: merged upstream calls split back exactly."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.batching import shares
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.test_proxy_forwarding import Target, wait_for_events
from tests.upstream_fake import FakeUpstream

# A window far longer than any test needs: batches here go when they are full.
BATCHED = {**UNLIMITED, "BATCHING_ENABLED": "true", "BATCH_WINDOW_MS": "20000"}


def vector(item: Any) -> list[float]:
    """What the fake answers for one input: derived from it, so a mix-up shows."""
    text = item if isinstance(item, str) else " ".join(map(str, item))
    return [float(len(text)), float(sum(text.encode()) % 997)]


def tokens_of(item: Any) -> int:
    return len(item.split()) if isinstance(item, str) else len(item)


class EmbeddingsUpstream(FakeUpstream):
    """Answers one embedding per input, in order, and counts tokens by words."""

    async def embeddings(self, request: Request) -> Response:  # type: ignore[override]
        body = json.loads(await self._record(request))
        if body["model"].startswith("fail-"):
            return JSONResponse(
                {"error": {"message": "upstream down", "type": "server_error", "code": "x"}},
                status_code=int(body["model"].split("-")[1]),
            )
        if body["model"] == "hold":
            await asyncio.to_thread(self.release.wait, 30)
        raw = body["input"]
        items = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else raw
        data = [
            {"object": "embedding", "index": i, "embedding": vector(item)}
            for i, item in enumerate(items)
        ]
        used = sum(tokens_of(item) for item in items)
        if body["model"] == "nousage":
            return JSONResponse({"object": "list", "model": "nousage", "data": data})
        return JSONResponse(
            {
                "object": "list",
                "model": body["model"],
                "data": data,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            },
            headers={"x-request-id": "req_upstream"},
        )


@pytest.fixture
def fake() -> Iterator[EmbeddingsUpstream]:
    upstream = EmbeddingsUpstream().start()
    yield upstream
    upstream.stop()


def serve(tmp_path: Path, fake: FakeUpstream, env: dict[str, str]) -> Target:
    creds = provision(env, tmp_path, fake.base_url)
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    return Target("batching", proxy, creds, env, tmp_path)


async def embed_all(target: Target, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=target.proxy.url, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/v1/embeddings",
                    json=body,
                    headers=target.headers(**{"X-Request-ID": f"emb-{i}"}),
                )
                for i, body in enumerate(bodies)
            )
        )


def upstream_calls(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in fake.requests if r.path == "/v1/embeddings"]


def test_concurrent_requests_share_one_call_and_get_their_own_answers(
    tmp_path: Path, fake: EmbeddingsUpstream
) -> None:
    target = serve(tmp_path, fake, {**BATCHED, "BATCH_MAX_SIZE": "4"})
    inputs: list[Any] = [
        "one two three",
        ["alpha beta", "gamma"],
        [101, 102, 103, 104],
        [[7, 8], [9]],
    ]
    try:
        answers = asyncio.run(
            embed_all(target, [{"model": "emb", "input": x, "user": "u"} for x in inputs])
        )
        calls = upstream_calls(fake)
    finally:
        target.proxy.stop()
    # text and token inputs never share a call: two calls of two requests each
    assert sorted(len(c["input"]) for c in calls) == [3, 3]
    assert all(c["user"] == "u" and c["model"] == "emb" for c in calls)
    expected_items = [
        ["one two three"],
        ["alpha beta", "gamma"],
        [[101, 102, 103, 104]],
        [[7, 8], [9]],
    ]
    for answer, items in zip(answers, expected_items, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-llm-proxy-batch"] == "2"
        assert answer.headers.get_list("x-request-id") == [answer.request.headers["x-request-id"]]
        data = answer.json()["data"]
        assert [d["index"] for d in data] == list(range(len(items)))
        assert [d["embedding"] for d in data] == [vector(i) for i in items]
    used = [a.json()["usage"]["prompt_tokens"] for a in answers]
    # the shares add up to what the upstream reported for each call, exactly
    assert used[0] + used[1] == 3 + 3
    assert used[2] + used[3] == 4 + 3
    events = wait_for_events(target, *(f"emb-{i}" for i in range(4)))
    assert [e.prompt_tokens for e in events] == used
    assert all(e.status == 200 for e in events)


def test_requests_whose_parameters_differ_are_never_merged(
    tmp_path: Path, fake: EmbeddingsUpstream
) -> None:
    target = serve(tmp_path, fake, {**BATCHED, "BATCH_MAX_SIZE": "2"})
    bodies = [
        {"model": "emb", "input": "a", "dimensions": 256},
        {"model": "emb", "input": "b", "dimensions": 512},
        {"model": "emb", "input": "c", "dimensions": 256},
        {"model": "emb", "input": "d", "dimensions": 512},
    ]
    try:
        answers = asyncio.run(embed_all(target, bodies))
        calls = upstream_calls(fake)
    finally:
        target.proxy.stop()
    assert sorted((c["dimensions"], sorted(c["input"])) for c in calls) == [
        (256, ["a", "c"]),
        (512, ["b", "d"]),
    ]
    for answer, body in zip(answers, bodies, strict=True):
        assert answer.json()["data"][0]["embedding"] == vector(body["input"])


def test_an_upstream_error_reaches_every_caller(tmp_path: Path, fake: EmbeddingsUpstream) -> None:
    target = serve(tmp_path, fake, {**BATCHED, "BATCH_MAX_SIZE": "3"})
    try:
        answers = asyncio.run(
            embed_all(target, [{"model": "fail-503", "input": x} for x in ("a", "b", "c")])
        )
        calls = upstream_calls(fake)
        events = wait_for_events(target, "emb-0", "emb-1", "emb-2")
    finally:
        target.proxy.stop()
    assert len(calls) == 1
    assert [a.status_code for a in answers] == [503, 503, 503]
    assert all(a.json()["error"]["message"] == "upstream down" for a in answers)
    assert [e.status for e in events] == [503, 503, 503]


def test_a_caller_that_leaves_does_not_break_the_others(
    tmp_path: Path, fake: EmbeddingsUpstream
) -> None:
    target = serve(tmp_path, fake, {**BATCHED, "BATCH_MAX_SIZE": "3"})

    async def scenario() -> list[httpx.Response]:
        body = json.dumps({"model": "hold", "input": "leaver"}).encode()
        head = (
            f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{target.creds.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        leaver = socket.create_connection(("127.0.0.1", target.proxy.port))
        leaver.sendall(head + body)
        stayers = asyncio.ensure_future(
            embed_all(target, [{"model": "hold", "input": x} for x in ("stay one", "stay")])
        )
        while not upstream_calls(fake):
            await asyncio.sleep(0.05)
        leaver.close()  # gone while the merged call is upstream
        await asyncio.sleep(0.2)
        fake.release.set()
        return await stayers

    try:
        answers = asyncio.run(scenario())
        calls = upstream_calls(fake)
    finally:
        target.proxy.stop()
    assert len(calls) == 1 and sorted(calls[0]["input"]) == ["leaver", "stay", "stay one"]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["data"][0]["embedding"] for a in answers] == [
        vector("stay one"),
        vector("stay"),
    ]


def test_usage_an_upstream_does_not_report_is_estimated_and_flagged(
    tmp_path: Path, fake: EmbeddingsUpstream
) -> None:
    target = serve(tmp_path, fake, {**BATCHED, "BATCH_MAX_SIZE": "2"})
    bodies = [{"model": "nousage", "input": "x" * 40}, {"model": "nousage", "input": [1, 2, 3]}]
    try:
        # text and tokens never merge: each goes alone once its window ends... so send pairs
        answers = asyncio.run(embed_all(target, [bodies[0], bodies[0], bodies[1], bodies[1]]))
        events = wait_for_events(target, "emb-0", "emb-1", "emb-2", "emb-3")
    finally:
        target.proxy.stop()
    assert [a.status_code for a in answers] == [200] * 4
    assert [e.usage_source for e in events] == ["estimated"] * 4
    assert [e.prompt_tokens for e in events] == [10, 10, 3, 3]


def test_off_by_default(tmp_path: Path, fake: EmbeddingsUpstream) -> None:
    target = serve(tmp_path, fake, UNLIMITED)
    try:
        answers = asyncio.run(embed_all(target, [{"model": "emb", "input": x} for x in "ab"]))
        calls = upstream_calls(fake)
    finally:
        target.proxy.stop()
    assert len(calls) == 2
    assert all("x-llm-proxy-batch" not in a.headers for a in answers)


@given(st.integers(0, 10**9), st.lists(st.integers(1, 10**6), min_size=1, max_size=30))
def test_shares_always_add_up_and_follow_the_weights(total: int, weights: list[int]) -> None:
    parts = shares(total, weights)
    assert sum(parts) == total
    whole = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part - total * weight / whole) < 1
