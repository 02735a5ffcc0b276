"""Request smuggling through the real proxy: what reaches the upstream, as h11 parses the exact
bytes on the wire, is one request per client request with exactly the client's body."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from shared.config import Settings
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.recording_upstream import RecordingUpstream


@dataclass
class Setup:
    proxy: ProxyProcess
    creds: Provisioned
    upstream: RecordingUpstream

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds.token}", **extra}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cwd: Path = tmp_path_factory.mktemp("smuggling")
    upstream = RecordingUpstream().start()
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false"}  # every request reaches the upstream
    creds = provision(env, cwd, upstream.base_url)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=1).start()
    yield Setup(proxy, creds, upstream)
    proxy.stop()
    upstream.stop()


def test_a_header_value_naming_chunked_does_not_change_the_framing(setup: Setup) -> None:
    """The reproduction: a large body with Content-Length and a User-Agent that contains
    "transfer-encoding: chunked" used to be sent chunk-framed under a Content-Length, leaving
    the tail of the body on the keep-alive connection as the start of the next request."""
    setup.upstream.reset()
    body = b'{"model":"m","input":"' + b"a" * (3 << 20) + b'"}'
    with httpx.Client(timeout=60) as client:
        for _ in range(2):
            resp = client.post(
                f"{setup.proxy.url}/v1/embeddings",
                headers=setup.headers(
                    **{
                        "User-Agent": "x transfer-encoding: chunked",
                        "Content-Type": "application/json",
                    }
                ),
                content=body,
            )
            assert resp.status_code == 200, resp.text
    seen = setup.upstream.requests()
    assert setup.upstream.errors() == []
    assert len(seen) == 2
    for request in seen:
        assert request.body == body
        assert request.header(b"content-length") == [str(len(body)).encode()]
        assert request.header(b"transfer-encoding") == []


def test_a_streamed_body_without_length_is_sent_chunked_and_whole(setup: Setup) -> None:
    setup.upstream.reset()
    parts = [b"x" * 700_000 for _ in range(3)]
    with httpx.Client(timeout=60) as client:
        resp = client.post(
            f"{setup.proxy.url}/v1/embeddings",
            headers=setup.headers(**{"User-Agent": "content-length: 5"}),
            content=iter(parts),
        )
    assert resp.status_code == 200, resp.text
    [seen] = setup.upstream.requests()
    assert setup.upstream.errors() == []
    assert seen.body == b"".join(parts)
    assert seen.header(b"transfer-encoding") == [b"chunked"]
    assert seen.header(b"content-length") == []


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to the proxy and read until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize(
    "value",
    [b"a\x00b", b"a\rb", b"x\x7f\x01"],
    ids=["nul", "bare-cr", "control"],
)
def test_a_header_value_that_cannot_be_forwarded_is_refused(setup: Setup, value: bytes) -> None:
    """Whoever rejects it (the server's parser or our wire check), the client gets a 4xx and
    the upstream sees nothing."""
    setup.upstream.reset()
    body = b'{"model":"m","input":"hi"}'
    request = (
        b"POST /v1/embeddings HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer %b\r\n"
        b"content-type: application/json\r\nuser-agent: %b\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%b" % (setup.creds.token.encode(), value, len(body), body)
    )
    answer = raw_exchange(setup.proxy.port, request)
    assert answer.startswith(b"HTTP/1.1 4"), answer
    assert setup.upstream.requests() == []


def test_the_client_gets_one_request_id_and_the_upstream_s_under_its_own_name(
    setup: Setup,
) -> None:
    client = openai.OpenAI(
        base_url=setup.proxy.url + "/v1", api_key=setup.creds.token, max_retries=0
    )
    raw = client.embeddings.with_raw_response.create(
        model="m", input="hi", extra_headers={"X-Request-ID": "req-client-1"}
    )
    assert raw.headers.get_list("x-request-id") == ["req-client-1"]
    assert raw.headers.get_list("x-upstream-request-id") == ["req_upstream_0001"]
    assert raw.request_id == "req-client-1"  # what the SDK reports (and logs) as the id
    client.close()


def test_an_upstream_answer_with_a_huge_head_is_a_502_envelope(setup: Setup) -> None:
    normal = setup.upstream.response
    setup.upstream.response = (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
        + b"".join(b"x-h-%d: %b\r\n" % (i, b"v" * 500) for i in range(2000))
        + b"\r\n{}"
    )
    try:
        resp = httpx.post(
            f"{setup.proxy.url}/v1/embeddings",
            headers=setup.headers(),
            json={"model": "m", "input": "hi"},
            timeout=60,
        )
    finally:
        setup.upstream.response = normal
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_error"
    assert not any(name.startswith("x-h-") for name in resp.headers)


@pytest.mark.parametrize("value", ["a\x00b", "a\x01b", "esc\x1b[0m", "del\x7f"])
def test_the_app_answers_400_for_a_header_another_server_let_through(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn refuses such bytes itself; the app must not rely on that (other servers, other
    protocols): the real app, in process, answers the error envelope and calls no upstream."""
    upstream = RecordingUpstream().start()
    try:
        env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "false"}
        creds = provision(env, tmp_path, upstream.base_url)
        monkeypatch.chdir(tmp_path)
        with TestClient(create_app(Settings.from_env(env))) as client:
            auth = {"Authorization": f"Bearer {creds.token}"}
            refused = client.post(
                "/v1/embeddings", headers={**auth, "User-Agent": value}, json={"model": "m"}
            )
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "invalid_header"
            assert value not in refused.text
            assert upstream.requests() == []
            assert client.post("/v1/embeddings", headers=auth, json={}).status_code == 200
            assert len(upstream.requests()) == 1
    finally:
        upstream.stop()
