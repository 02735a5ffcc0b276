"""Model scopes: the pure matcher and body readers (Hypothesis for the reader; httpx's own
multipart encoder as the peer), then through a real server: refused before the cache and the
upstream on every route that names a model, streaming included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from admin.cli import app
from proxy.model_scope import model_of, names_model
from shared.errors import UserError
from shared.scopes import ModelScope, normalise_models
from tests.proxy_process import UNLIMITED, ProxyProcess, provision
from tests.test_cli import UPSTREAM_KEY, cli_env, fails, ok_json
from tests.upstream_script import Reply, ScriptedUpstream

__all__ = ["cli_env"]


def test_scope_matching() -> None:
    scope = ModelScope.of("gpt-4o-mini, gpt-4.1-*,o3".replace(" ", ""), "gpt-4*")
    assert scope is not None
    assert scope.allows("gpt-4o-mini") and scope.allows("gpt-4.1-nano")
    assert not scope.allows("o3")  # the project does not allow it
    assert not scope.allows("gpt-4o")  # not in the token's
    assert not scope.allows("gpt-4o-mini-2024-07-18")  # exact names are exact
    assert not scope.allows("GPT-4O-MINI")
    assert ModelScope.of(None, "") is None
    only = ModelScope.of("m[12]")
    assert only is not None and only.allows("m1") and not only.allows("m3")


@pytest.mark.parametrize("text", ["a,,b", "a b", "x" * 201, ",".join(["m"] * 101) + ",z"])
def test_bad_scopes_are_refused(text: str) -> None:
    with pytest.raises(UserError):
        normalise_models(text)


def test_scopes_normalise() -> None:
    assert normalise_models(" a , b,a ") == "a,b"
    assert normalise_models("  ") is None


def _multipart(fields: dict[str, str]) -> tuple[bytes, bytes]:
    request = httpx.Request(
        "POST", "http://127.0.0.1/", data=fields, files={"file": ("a.wav", b"RIFF\x00\x01")}
    )
    return request.read(), request.headers["content-type"].encode()


def test_model_of_bodies() -> None:
    assert model_of(b'{"model": "gpt-4o", "messages": []}', b"application/json") == "gpt-4o"
    assert model_of(b'{"model": 5}', None) is None
    assert model_of(b"[]", None) is None
    assert model_of(b"not json", None) is None
    body, kind = _multipart({"model": "whisper-1", "language": "en"})
    assert model_of(body, kind) == "whisper-1"
    body, kind = _multipart({"language": "en"})
    assert model_of(body, kind) is None
    assert model_of(b"garbage", b"multipart/form-data; boundary=x") is None


@given(st.binary(max_size=512), st.sampled_from([None, b"multipart/form-data; boundary=b"]))
def test_model_of_never_raises(body: bytes, kind: bytes | None) -> None:
    model_of(body, kind)


def test_routes_that_name_a_model() -> None:
    assert names_model("POST", "/chat/completions") and names_model("POST", "/chat/completions/")
    assert names_model("POST", "/audio/transcriptions") and names_model("POST", "/batches")
    assert not names_model("GET", "/models") and not names_model("POST", "/responses/r1/cancel")


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    for model in ("gpt-4o-mini", "gpt-4.1-nano", "whisper-1", "o3"):
        server.scripts[model] = lambda body, m=model: Reply(
            [json.dumps({"model": m, "choices": [], "usage": {"prompt_tokens": 1}}).encode()],
            content_type="application/json",
        )
    yield server
    server.stop()


def test_scopes_through_the_server(
    tmp_path: Path, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**UNLIMITED, "HTTP_CACHE_ENABLED": "true"}
    cred = provision(env, tmp_path, upstream.base_url, models="gpt-4o-mini,gpt-4.1-*,o3,whisper-*")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    done = runner.invoke(
        app, ["manage", "project", "update", "p", "--models", "gpt-4*,whisper-1"], env=env
    )
    assert done.exit_code == 0, done.output
    shown = json.loads(
        runner.invoke(app, ["manage", "token", "show", cred.token_id, "--json"], env=env).stdout
    )
    assert shown["models"] == "gpt-4o-mini,gpt-4.1-*,o3,whisper-*"
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    headers = {"Authorization": f"Bearer {cred.token}"}

    def post(path: str, kind: str = "", **kw: object) -> httpx.Response:
        sent = {**headers, "content-type": kind} if kind else headers
        return httpx.post(proxy.url + path, headers=sent, timeout=30, **kw)  # type: ignore[arg-type]

    try:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        assert (
            post("/v1/chat/completions", json={"model": "gpt-4o-mini", **chat}).status_code == 200
        )
        assert (
            post("/v1/chat/completions", json={"model": "gpt-4.1-nano", **chat}).status_code == 200
        )
        refused = [
            post("/v1/chat/completions", json={"model": "gpt-4o", **chat}),
            post("/v1/chat/completions", json={"model": "gpt-4o", "stream": True, **chat}),
            post("/v1/chat/completions", json={"model": "o3", **chat}),  # not the project's
            post("/v1/chat/completions/", json={"model": "gpt-4o", **chat}),
            post("/v1/chat/completions", json=chat),  # no model to check
            post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}),
            post("/v1/responses", json={"model": "gpt-5", "input": "x"}),
            post("/v1/batches", json={"input_file_id": "f", "endpoint": "/v1/chat/completions"}),
            post("/v1/chat/completions", content=b"{not json"),
        ]
        for reply in refused:
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["code"] == "model_not_allowed"
        body, kind = _multipart({"model": "whisper-1"})
        ok = post(
            "/v1/audio/transcriptions",
            content=body,
            kind=kind.decode(),
        )
        # forwarded: the scripted upstream answers multipart with its own "bad json" 400
        assert ok.json() == {"error": {"message": "bad json"}}, ok.text
        body, kind = _multipart({"model": "whisper-2"})
        no = post(
            "/v1/audio/transcriptions",
            content=body,
            kind=kind.decode(),
        )
        assert no.status_code == 400 and no.json()["error"]["code"] == "model_not_allowed"
    finally:
        proxy.stop()
    # nothing refused reached the upstream (the transcription is multipart: not a JSON model)
    assert sorted(upstream.bodies) == ["gpt-4.1-nano", "gpt-4o-mini"]


def test_scopes_are_set_shown_and_cleared(cli_env: dict[str, str]) -> None:
    env = cli_env
    ok_json(env, "manage", "project", "create", "--name", "s", "--api-key", UPSTREAM_KEY)
    made = ok_json(
        env, "manage", "token", "generate", "--project-id", "s", "--models", "gpt-4o-mini, o*"
    )
    assert made["models"] == "gpt-4o-mini,o*"
    rotated = ok_json(env, "manage", "token", "rotate", made["id"])
    assert rotated["models"] == "gpt-4o-mini,o*"  # a rotation keeps the scope
    assert "without empty entries" in fails(
        env, "manage", "token", "update", made["id"], "--models", "a,,b"
    )
    cleared = ok_json(env, "manage", "token", "update", made["id"], "--models", "")
    assert cleared["models"] is None
    project = ok_json(env, "manage", "project", "update", "s", "--models", "gpt-*")
    assert project["models"] == "gpt-*"
    assert ok_json(env, "manage", "project", "update", "s", "--models", "")["models"] is None
