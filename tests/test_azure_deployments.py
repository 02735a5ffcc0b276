"""Azure deployment tables through the real server and the official openai SDK: a plain OpenAI
client's model and an AzureOpenAI client's deployment both reach the deployment the operator
mapped them to (on the project, or on one of its upstreams), with the pinned api-version and
the key in ``api-key``, against fakes that know only their own deployments."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.provider_fakes import AzureFake
from tests.provider_kit import event_row
from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.test_cli import cli, ok_json

EAST_KEY = "azure-east-KEY-0123456789abcdef"
WEST_KEY = "azure-west-KEY-0123456789abcdef"
PINNED = "2025-01-01-preview"
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Setup:
    east: AzureFake  # the project's own resource: deployments prod-4o and mini
    west: AzureFake  # the upstream of the second project: deployment west-4o
    proxy: ProxyProcess
    env: dict[str, str]
    cwd: Path
    single: str  # the token of the project served by its own base URL
    routed: str  # the token of the project served by its upstream
    scoped: str  # a token of the first project that may use gpt-4o-mini only
    http: openai.DefaultHttpxClient  # the SDK's own client kind, shared, closed with the fixture


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cwd = tmp_path_factory.mktemp("azure-deployments")
    (cwd / "proxy.db").touch()
    env = {**UNLIMITED, "DATABASE_URL": str(cwd / "proxy.db")}
    east = AzureFake(
        key=EAST_KEY, deployments=frozenset({"prod-4o", "mini"}), api_version=PINNED
    ).start()
    west = AzureFake(key=WEST_KEY, deployments=frozenset({"west-4o"})).start()
    here = os.getcwd()
    os.chdir(cwd)  # the generated ENCRYPTION_KEY file sits beside the database
    try:
        assert cli(env, "migrate").exit_code == 0
        single = ok_json(
            env, "manage", "project", "create", "--name", "az", "--kind", "azure-openai",
            "--base-url", east.base_url, "--api-key", EAST_KEY,
            "--deployment", "gpt-4o=prod-4o", "--deployment", "gpt-4o-mini=mini",
            "--api-version", PINNED,
        )  # fmt: skip
        routed = ok_json(
            env, "manage", "project", "create", "--name", "az-routed", "--kind", "azure-openai",
            "--api-key", EAST_KEY,
        )  # fmt: skip
        ok_json(
            env, "manage", "project", "upstream", "add", "--project-id", "az-routed",
            "--base-url", west.base_url, "--api-key", WEST_KEY, "--kind", "azure-openai",
            "--deployment", "gpt-4o=west-4o",
        )  # fmt: skip
        tokens = [
            ok_json(env, "manage", "token", "generate", "--project-id", p["id"])["token"]
            for p in (single, routed)
        ]
        scoped = ok_json(
            env, "manage", "token", "generate", "--project-id", "az", "--models", "gpt-4o-mini"
        )["token"]
    finally:
        os.chdir(here)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=1).start()
    with openai.DefaultHttpxClient() as http:
        yield Setup(east, west, proxy, env, cwd, *tokens, scoped, http)
    proxy.stop()
    east.stop()
    west.stop()


def _openai(setup: Setup, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=setup.proxy.url + "/v1", api_key=token, max_retries=0, http_client=setup.http
    )


def _azure(setup: Setup, token: str, **kw: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=setup.proxy.url,
        api_key=token,
        api_version="2024-06-01",
        max_retries=0,
        http_client=setup.http,
        **kw,  # type: ignore[arg-type]
    )


def test_a_plain_openai_client_reaches_the_deployment_its_model_maps_to(setup: Setup) -> None:
    request_id = "req-" + uuid.uuid4().hex
    reply = _openai(setup, setup.single).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id},
    )
    assert reply.choices[0].message.content == "from mini"
    seen = setup.east.requests[-1]
    assert seen.path == "/openai/deployments/mini/chat/completions"
    assert seen.query == {"api-version": PINNED}
    assert seen.headers["api-key"] == EAST_KEY and "authorization" not in seen.headers
    row = event_row(setup.env, setup.cwd, request_id)
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (200, 9, 3)


def test_the_azure_sdk_client_works_unchanged_through_the_table(setup: Setup) -> None:
    # The SDK names the model as its deployment: mapped; the client's api-version gives way
    # to the pinned one, which is the only one this resource serves.
    reply = _azure(setup, setup.single).chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == "from prod-4o"
    seen = setup.east.requests[-1]
    assert seen.path == "/openai/deployments/prod-4o/chat/completions"
    assert seen.query == {"api-version": PINNED}
    # A client that names a real deployment itself keeps it.
    named = _azure(setup, setup.single, azure_deployment="mini")
    reply = named.chat.completions.create(model="whatever", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "from mini"
    assert setup.east.requests[-1].path == "/openai/deployments/mini/chat/completions"


def test_a_model_the_table_does_not_name_is_its_own_deployment(setup: Setup) -> None:
    with pytest.raises(openai.NotFoundError):
        _openai(setup, setup.single).chat.completions.create(
            model="o3",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    assert setup.east.requests[-1].path == "/openai/deployments/o3/chat/completions"


def test_an_upstreams_own_table_and_the_clients_api_version(setup: Setup) -> None:
    for client in (_openai(setup, setup.routed), _azure(setup, setup.routed)):
        before = len(setup.east.requests)
        reply = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "from west-4o"
        seen = setup.west.requests[-1]
        assert seen.path == "/openai/deployments/west-4o/chat/completions"
        assert seen.headers["api-key"] == WEST_KEY
        assert len(setup.east.requests) == before  # the project's own base URL is not used
    # nothing pinned on this upstream: the AzureOpenAI client's version, else the default
    versions = [r.query["api-version"] for r in setup.west.requests[-2:]]
    assert versions == ["2024-10-21", "2024-06-01"]


def test_a_model_scope_checks_the_name_that_picks_the_deployment(setup: Setup) -> None:
    reply = _azure(setup, setup.scoped).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == "from mini"
    before = len(setup.east.requests)
    # the body names an allowed model, the path the deployment that would run: refused
    response = httpx.post(
        setup.proxy.url + "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"api-key": setup.scoped},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert "gpt-4o" in response.json()["error"]["message"]
    assert len(setup.east.requests) == before
