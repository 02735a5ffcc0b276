"""Bad input and failure paths through the real server: auth, routing, limits, upstream errors,
disconnects, CORS and the in-flight cap."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from shared.clock import utcnow
from shared.config import Settings
from shared.crypto import load_keyring
from shared.invalidation import Notifier
from shared.management import Management
from shared.management import inputs as i
from shared.store import make_store
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.services import free_port
from tests.upstream_fake import FakeUpstream

ENV = {
    **UNLIMITED,
    "MAX_REQUEST_BODY_BYTES": "65536",
    "UPSTREAM_READ_TIMEOUT": "1s",
    "CORS_ALLOWED_ORIGINS": "https://app.example",
    "MAX_IN_FLIGHT_REQUESTS": "3",
}
UNIFORM_401 = {
    "error": {
        "message": "Invalid or missing API key.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
        "param": None,
    }
}


@dataclass
class Env:
    proxy: ProxyProcess
    creds: Provisioned
    cwd: Path
    fake: FakeUpstream

    @property
    def url(self) -> str:
        return self.proxy.url

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.creds.token}"}

    def manage(self) -> _Manage:
        return _Manage(self.cwd)


class _Manage:
    """Management actions as the CLI runs them (with the change notifier), in the test."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        def call(*args: object, **kw: object) -> object:
            async def go() -> object:
                here = os.getcwd()
                os.chdir(self.cwd)
                try:
                    settings = Settings.from_env({})
                    store = make_store(settings)
                    await store.open()
                    try:
                        mgmt = Management(
                            store=store,
                            keyring=load_keyring(settings),
                            actor="test",
                            notifier=Notifier(store),
                        )
                        return await getattr(mgmt, name)(*args, **kw)
                    finally:
                        await store.close()
                finally:
                    os.chdir(here)

            return asyncio.run(go())

        return call


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    fake = FakeUpstream().start()
    cwd = tmp_path_factory.mktemp("errors")
    creds = provision({}, cwd, fake.base_url)
    proxy = ProxyProcess(env=ENV, cwd=cwd, workers=1).start()
    yield Env(proxy, creds, cwd, fake)
    proxy.stop()
    fake.stop()


def test_every_auth_failure_looks_the_same(env: Env) -> None:
    m = env.manage()
    project = m.create_project(
        i.CreateProject(name="auth-p", base_url=env.fake.base_url, api_key="sk-upstream-x")
    )
    revoked = m.generate_token(i.GenerateToken(project_id=project["id"]))
    expiring = m.generate_token(i.GenerateToken(project_id=project["id"], duration="1s"))
    other = m.create_project(
        i.CreateProject(name="inactive-p", base_url=env.fake.base_url, api_key="sk-upstream-y")
    )
    inactive = m.generate_token(i.GenerateToken(project_id=other["id"]))
    url = f"{env.url}/v1/models"
    # prime the worker's cache, so the revocations below must invalidate it
    for tok in (revoked["token"], inactive["token"]):
        assert httpx.get(url, headers=env.auth(tok)).status_code == 200
    m.revoke_token(i.TokenRef(token_id=revoked["id"]))
    m.deactivate_project(i.DeactivateProject(project_id=other["id"]))
    time.sleep(1.1)  # the short-lived token expires
    cases = {
        "missing": {},
        "garbled": {"Authorization": "Bearer sk-llmp-!!!"},
        "wrong scheme": {"Authorization": f"Basic {env.creds.token}"},
        "unknown": env.auth("sk-llmp-" + "A" * 43),
        "expired": env.auth(expiring["token"]),
    }
    for name, headers in cases.items():
        resp = httpx.get(url, headers=headers)
        assert resp.status_code == 401, name
        assert resp.json() == UNIFORM_401, name
    deadline = time.monotonic() + 5
    for tok in (revoked["token"], inactive["token"]):
        while httpx.get(url, headers=env.auth(tok)).status_code != 401:
            assert time.monotonic() < deadline, "revocation never reached the worker"
            time.sleep(0.05)
        assert httpx.get(url, headers=env.auth(tok)).json() == UNIFORM_401
    # the other SDK header styles work for a good token
    assert httpx.get(url, headers={"api-key": env.creds.token}).status_code == 200
    assert httpx.get(url, headers={"x-api-key": env.creds.token}).status_code == 200
    logs = env.proxy.logs()
    assert "token revoked or inactive" in logs and "project inactive" in logs
    assert "token expired" in logs and "unknown token" in logs
    for tok in (revoked["token"], inactive["token"], expiring["token"], env.creds.token):
        assert tok not in logs


def raw_request(port: int, target: str, token: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../v1/models",
        "/v1/models/../../admin",
        "/v1/%2e%2e/models",
        "/v1/%2E%2e/x",
        "/v1/models%2f..%2fadmin",
        "/v1/models%5c..",
        "//evil.example/v1/models",
        "/v1//models",
        "/v1/models/.",
        "/v1/%00/models",
        "/v2/models",
        "/v1",
        "/admin",
    ],
)
def test_paths_that_could_escape_the_upstream_are_404_before_any_io(env: Env, target: str) -> None:
    env.fake.reset()
    status, body = raw_request(env.proxy.port, target, env.creds.token)
    assert status == 404, body
    assert b'"code":"not_found"' in body
    assert env.fake.requests == []


def test_absolute_form_targets_still_go_to_the_project_upstream(env: Env) -> None:
    env.fake.reset()
    status, _ = raw_request(env.proxy.port, "http://evil.example/v1/models", env.creds.token)
    assert status == 200
    assert [r.path for r in env.fake.requests] == ["/v1/models"]


def test_unknown_endpoint_and_wrong_method(env: Env) -> None:
    assert httpx.get(f"{env.url}/v1/fine_tuning/jobs", headers=env.auth()).status_code == 404
    resp = httpx.put(f"{env.url}/v1/chat/completions", headers=env.auth(), json={})
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"


def test_oversized_bodies_get_413(env: Env) -> None:
    env.fake.reset()
    big = b"x" * 70_000
    resp = httpx.post(f"{env.url}/v1/embeddings", headers=env.auth(), content=big)
    assert resp.status_code == 413

    def chunked() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 10_000

    resp = httpx.post(f"{env.url}/v1/embeddings", headers=env.auth(), content=chunked())
    assert resp.status_code == 413
    assert env.fake.requests == []


def test_malformed_json_passes_through_unchanged(env: Env) -> None:
    env.fake.reset()
    body = b'{"model": "gpt-fake", "messages": [ oops'
    resp = httpx.post(
        f"{env.url}/v1/chat/completions",
        headers={**env.auth(), "Content-Type": "application/json"},
        content=body,
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "bad json"
    assert env.fake.requests[-1].body == body


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_upstream_errors_pass_through_with_their_bodies(env: Env, status: int) -> None:
    resp = httpx.post(
        f"{env.url}/v1/chat/completions",
        headers=env.auth(),
        json={"model": f"fail-{status}", "messages": []},
    )
    assert resp.status_code == status
    assert resp.json()["error"]["message"] == f"upstream says {status}"
    assert resp.headers["x-upstream-error"] == "yes"


def test_upstream_timeout_is_504(env: Env) -> None:
    resp = httpx.post(
        f"{env.url}/v1/chat/completions",
        headers=env.auth(),
        json={"model": "slow-3", "messages": []},
        timeout=10,
    )
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"


def test_upstream_down_is_502(env: Env) -> None:
    m = env.manage()
    project = m.create_project(
        i.CreateProject(
            name="down", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="sk-upstream-z"
        )
    )
    token = m.generate_token(i.GenerateToken(project_id=project["id"]))["token"]
    resp = httpx.get(f"{env.url}/v1/models", headers=env.auth(token))
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_error"


def test_redirects_are_not_followed_and_cookies_not_passed(env: Env) -> None:
    env.fake.reset()
    resp = httpx.get(f"{env.url}/v1/models?fake=redirect", headers=env.auth())
    assert resp.status_code == 302
    assert len(env.fake.requests) == 1
    resp = httpx.get(f"{env.url}/v1/models?fake=cookie", headers=env.auth())
    assert resp.status_code == 200
    assert "set-cookie" not in resp.headers and resp.headers["x-upstream"] == "yes"


def test_client_disconnect_mid_stream_closes_the_upstream_stream(env: Env) -> None:
    env.fake.reset()
    with httpx.stream(
        "POST",
        f"{env.url}/v1/chat/completions",
        headers=env.auth(),
        json={"model": "hold", "messages": [], "stream": True},
    ) as resp:
        assert next(line for line in resp.iter_lines() if line).startswith("data:")
    # the client is gone while the upstream still holds the stream open
    assert env.fake.stream_cancelled.wait(10), "the upstream stream was left running"
    assert not env.fake.stream_finished.is_set()


def test_cors_preflight_without_auth_and_headers_on_answers(env: Env) -> None:
    pre = httpx.options(
        f"{env.url}/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    resp = httpx.get(
        f"{env.url}/v1/models", headers={**env.auth(), "Origin": "https://app.example"}
    )
    assert resp.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.get(
        f"{env.url}/v1/models", headers={**env.auth(), "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_in_flight_cap_answers_503_with_retry_after(env: Env) -> None:
    env.fake.reset()
    streams = []
    lines = []  # keep the iterators: dropping one closes its stream
    clients = [httpx.Client() for _ in range(3)]
    try:
        for client in clients:
            ctx = client.stream(
                "POST",
                f"{env.url}/v1/chat/completions",
                headers=env.auth(),
                json={"model": "hold", "messages": [], "stream": True},
            )
            resp = ctx.__enter__()
            lines.append(resp.iter_lines())
            assert next(lines[-1]).startswith("data:")
            streams.append(ctx)
        over = httpx.get(f"{env.url}/v1/models", headers=env.auth())
        assert over.status_code == 503
        assert over.headers["retry-after"] == "1"
        assert over.json()["error"]["code"] == "overloaded"
    finally:
        env.fake.release.set()
        for ctx in streams:
            ctx.__exit__(None, None, None)
        for client in clients:
            client.close()
    assert httpx.get(f"{env.url}/v1/models", headers=env.auth()).status_code == 200


def test_health_ready_and_metrics(env: Env) -> None:
    assert httpx.get(f"{env.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{env.url}/live").status_code == 200
    assert httpx.get(f"{env.url}/ready").json() == {"status": "ready"}
    text = httpx.get(f"{env.url}/metrics").text
    assert 'llm_proxy_requests_total{endpoint="/v1/models",method="GET",status="200"}' in text
    assert "llm_proxy_auth_failures_total" in text
    assert "llm_proxy_request_duration_seconds_bucket" in text
    assert httpx.get(f"{env.url}/nope").json()["error"]["code"] == "not_found"


def test_expired_token_from_the_store(env: Env) -> None:
    """A token whose expiry passed while it sat in a worker's cache is refused at once."""

    async def expire() -> None:
        here = os.getcwd()
        os.chdir(env.cwd)
        try:
            store = make_store(Settings.from_env({}))
            await store.open()
            await store.update_token(tok["id"], {"expires_at": utcnow() + timedelta(seconds=1)})
            await store.close()
        finally:
            os.chdir(here)

    tok = env.manage().generate_token(i.GenerateToken(project_id=env.creds.project_id))
    asyncio.run(expire())
    url = f"{env.url}/v1/models"
    assert httpx.get(url, headers=env.auth(tok["token"])).status_code == 200
    time.sleep(1.1)
    assert httpx.get(url, headers=env.auth(tok["token"])).status_code == 401


def test_a_rotated_token_works_until_its_grace_ends(env: Env) -> None:
    m = env.manage()
    old = m.generate_token(i.GenerateToken(project_id=env.creds.project_id, rpm=0))
    url = f"{env.url}/v1/models"
    assert httpx.get(url, headers=env.auth(old["token"])).status_code == 200  # cached now
    new = m.rotate_token(i.RotateToken(token_id=old["id"], grace="2s"))
    assert new["replaces"] == old["id"] and new["token"] != old["token"]
    assert new["rpm"] == 0 and new["project_id"] == env.creds.project_id  # same limits
    assert httpx.get(url, headers=env.auth(new["token"])).status_code == 200  # at once
    assert httpx.get(url, headers=env.auth(old["token"])).status_code == 200  # in its grace
    deadline = time.monotonic() + 30
    while httpx.get(url, headers=env.auth(old["token"])).status_code != 401:
        assert time.monotonic() < deadline, "the old token outlived its grace period"
        time.sleep(0.1)
    assert httpx.get(url, headers=env.auth(new["token"])).status_code == 200
    audit = m.audit_page(i.AuditQuery(action="token.rotate"))["data"]
    assert audit[0]["target_id"] == old["id"] and audit[0]["details"]["new_token_id"] == new["id"]
    assert new["token"] not in env.proxy.logs()
