"""End to end through the real server (gunicorn, 2 workers) on the embedded default and on
Postgres: forwarding, headers, streaming, usage on events, and the openai SDK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from shared.config import Settings
from shared.crypto import new_key
from shared.events import FINAL, RequestEvent
from shared.store import make_store
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision, run_async
from tests.services import create_database, drop_database, require
from tests.upstream_fake import FakeUpstream, as_json

UPSTREAM_KEY = "sk-upstream-PROJECTKEY-0123456789"


@dataclass
class Target:
    name: str
    proxy: ProxyProcess
    creds: Provisioned
    env: dict[str, str]
    cwd: Path

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds.token}", **extra}

    def events(self) -> list[RequestEvent]:
        return run_async(_events(self.env, self.cwd, self.creds.token_id))


async def _events(env: dict[str, str], cwd: Path, token_id: str) -> list[RequestEvent]:
    import os

    here = os.getcwd()
    os.chdir(cwd)
    try:
        store = make_store(Settings.from_env(env))
        await store.open()
        try:
            async with store.transaction(readonly=True) as tx:
                rows = await tx.fetchall(
                    "SELECT event_id, request_id, ts, project_id, token_id, method, path, "
                    "status, model, prompt_tokens, completion_tokens, total_tokens, stream, "
                    "error, cache_status, usage_source, phase FROM request_events "
                    "WHERE token_id = %s "
                    "ORDER BY ts",
                    (token_id,),
                )
        finally:
            await store.close()
    finally:
        os.chdir(here)
    out = []
    for r in rows:
        r["ts"] = r["ts"].timestamp()
        out.append(RequestEvent.from_dict(r))
    return out


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def target(
    request: pytest.FixtureRequest, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    cwd = tmp_path_factory.mktemp(request.param)
    db_url = None
    if request.param == "embedded":
        env: dict[str, str] = dict(UNLIMITED)  # no other configuration
    else:
        require("PostgreSQL", "127.0.0.1", 5432)
        db_url = create_database()
        env = {
            **UNLIMITED,
            "DB_DRIVER": "postgres",
            "DATABASE_URL": db_url,
            "ENCRYPTION_KEY": new_key(),
        }
    creds = provision(env, cwd, fake.base_url, api_key=UPSTREAM_KEY)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=2).start()
    yield Target(request.param, proxy, creds, env, cwd)
    proxy.stop()
    if db_url:
        drop_database(db_url)


def wait_for_events(target: Target, *request_ids: str, timeout: float = 10.0) -> list[RequestEvent]:
    """The final events of these requests, in the order given, once all are recorded."""
    deadline = time.monotonic() + timeout
    while True:
        by_id = {e.request_id: e for e in target.events() if e.phase == FINAL}
        if all(r in by_id for r in request_ids):
            return [by_id[r] for r in request_ids]
        assert time.monotonic() < deadline, f"events not recorded: {request_ids}"
        time.sleep(0.05)


def test_chat_forwards_with_the_project_key_and_allowed_headers_only(
    target: Target, fake: FakeUpstream
) -> None:
    fake.reset()
    resp = httpx.post(
        f"{target.proxy.url}/v1/chat/completions",
        headers=target.headers(
            **{
                "Cookie": "session=secret",
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Host": "evil",
                "OpenAI-Organization": "org-client",
                "OpenAI-Beta": "assistants=v2",
                "X-Custom": "nope",
                "User-Agent": "test-agent/1",
                "X-Request-ID": "req-abc.1",
                "Proxy-Authorization": "Basic eA==",
                "TE": "trailers",
            }
        ),
        json={"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "hello"
    assert resp.headers["x-request-id"] == "req-abc.1"
    assert "proxy;dur=" in resp.headers["server-timing"]
    assert "upstream;dur=" in resp.headers["server-timing"]
    [seen] = fake.requests
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen.headers["openai-beta"] == "assistants=v2"
    assert seen.headers["user-agent"] == "test-agent/1"
    assert seen.headers["content-type"] == "application/json"
    for forbidden in (
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "openai-organization",
        "x-custom",
        "proxy-authorization",
        "te",
        "api-key",
        "x-api-key",
    ):
        assert forbidden not in seen.headers
    assert target.creds.token not in json.dumps(seen.headers)


def test_request_ids_are_generated_when_missing_or_malformed(target: Target) -> None:
    url = f"{target.proxy.url}/v1/models"
    generated = httpx.get(url, headers=target.headers()).headers["x-request-id"]
    bad = httpx.get(url, headers=target.headers(**{"X-Request-ID": "bad id\twith spaces"}))
    assert len(generated) >= 16
    assert bad.headers["x-request-id"] not in ("bad id\twith spaces", generated)


def test_streaming_reaches_the_client_before_the_upstream_finishes(
    target: Target, fake: FakeUpstream
) -> None:
    """The fake sends one chunk and then holds the stream open until the test has read that
    chunk through the proxy; a buffering proxy would deadlock here and time out."""
    fake.reset()
    events: list[bytes] = []
    with httpx.stream(
        "POST",
        f"{target.proxy.url}/v1/chat/completions",
        headers=target.headers(),
        json={"model": "hold", "messages": [], "stream": True},
        timeout=20,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        first = next(line for line in lines if line)
        assert not fake.stream_finished.is_set()  # the upstream is still holding
        fake.release.set()
        events = [first.encode()] + [line.encode() for line in lines if line]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [f"t{i}" for i in range(5)]
    # we asked the upstream for usage; the client did not, so it never sees that chunk
    assert all(c["choices"] for c in chunks)
    assert as_json(fake.requests[-1])["stream_options"] == {"include_usage": True}


def test_streaming_keeps_usage_chunk_when_the_client_asked(target: Target) -> None:
    with httpx.stream(
        "POST",
        f"{target.proxy.url}/v1/chat/completions",
        headers=target.headers(),
        json={
            "model": "gpt-fake",
            "messages": [],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as resp:
        body = resp.read()
    assert b'"choices": [], "usage": {"prompt_tokens": 9' in body


def test_embeddings_and_models(target: Target, fake: FakeUpstream) -> None:
    fake.reset()
    emb = httpx.post(
        f"{target.proxy.url}/v1/embeddings",
        headers=target.headers(),
        json={"model": "emb-fake", "input": "hello"},
    )
    assert emb.status_code == 200 and emb.json()["data"][0]["embedding"] == [0.1, 0.2, 0.3]
    models = httpx.get(f"{target.proxy.url}/v1/models?limit=5&order=asc", headers=target.headers())
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "gpt-fake"
    assert fake.requests[-1].query == "limit=5&order=asc"
    head = httpx.head(f"{target.proxy.url}/v1/models", headers=target.headers())
    assert head.status_code == 200 and head.content == b""


def test_usage_lands_on_the_events(target: Target) -> None:
    url = f"{target.proxy.url}/v1/chat/completions"
    httpx.post(
        url,
        headers=target.headers(**{"X-Request-ID": f"u1-{target.name}"}),
        json={"model": "gpt-fake", "messages": []},
    )
    with httpx.stream(
        "POST",
        url,
        headers=target.headers(**{"X-Request-ID": f"u2-{target.name}"}),
        json={"model": "gpt-fake", "messages": [], "stream": True},
    ) as resp:
        resp.read()
    plain, streamed = wait_for_events(target, f"u1-{target.name}", f"u2-{target.name}")
    assert not plain.stream and streamed.stream
    assert (plain.model, plain.prompt_tokens, plain.completion_tokens) == ("gpt-fake", 11, 7)
    assert (streamed.model, streamed.prompt_tokens, streamed.total_tokens) == ("gpt-fake", 9, 14)
    assert plain.status == streamed.status == 200
    assert plain.path == "/v1/chat/completions"


def test_the_official_openai_sdk_works(target: Target) -> None:
    client = openai.OpenAI(
        base_url=f"{target.proxy.url}/v1", api_key=target.creds.token, max_retries=0
    )
    chat = client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "hello"
    assert chat.usage is not None and chat.usage.total_tokens == 18
    stream = client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "t0t1t2t3t4"
    emb = client.embeddings.create(model="emb-fake", input="hello")
    assert emb.data[0].embedding == [0.1, 0.2, 0.3]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{target.proxy.url}/v1", api_key="sk-llmp-wrong", max_retries=0
        ).models.list()


def test_many_concurrent_requests_all_answered(target: Target) -> None:
    results: list[int] = []

    def worker() -> None:
        with httpx.Client(headers=target.headers()) as client:
            for _ in range(10):
                results.append(
                    client.post(
                        f"{target.proxy.url}/v1/embeddings", json={"model": "e", "input": "x"}
                    ).status_code
                )

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 80
