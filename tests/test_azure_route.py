"""Azure OpenAI through the real server: the official openai SDK's AzureOpenAI client works
unchanged against an azure-openai project (deployment path, api-version, key in api-key), and
a plain OpenAI client's /v1 request is mapped onto the deployment named by its model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.provider_fakes import AzureFake
from tests.provider_kit import event_row, provision_kind
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess

KEY = "azure-upstream-KEY-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Setup:
    fake: AzureFake
    proxy: ProxyProcess
    creds: Provisioned
    env: dict[str, str]
    cwd: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cwd = tmp_path_factory.mktemp("azure")
    fake = AzureFake(key=KEY).start()
    env = {**UNLIMITED, "AZURE_OPENAI_API_VERSION": "2024-10-21"}
    creds = provision_kind(env, cwd, fake.base_url, "azure-openai", name="az", api_key=KEY)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=1).start()
    yield Setup(fake, proxy, creds, env, cwd)
    proxy.stop()
    fake.stop()


def test_the_azure_sdk_client_works_unchanged(setup: Setup) -> None:
    request_id = "req-" + uuid.uuid4().hex
    client = openai.AzureOpenAI(
        azure_endpoint=setup.proxy.url,
        api_key=setup.creds.token,
        api_version="2024-06-01",
        max_retries=0,
    )
    reply = client.chat.completions.create(
        model="my-gpt4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id},
    )
    assert reply.choices[0].message.content == "from my-gpt4o"
    seen = setup.fake.requests[-1]
    assert seen.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert seen.query["api-version"] == "2024-06-01"  # the client's own
    assert seen.headers["api-key"] == KEY
    row = event_row(setup.env, setup.cwd, request_id)
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (200, 9, 3)


def test_an_openai_client_is_mapped_onto_the_deployment_its_model_names(setup: Setup) -> None:
    client = openai.OpenAI(
        base_url=setup.proxy.url + "/v1", api_key=setup.creds.token, max_retries=0
    )
    reply = client.chat.completions.create(model="prod-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "from prod-4o"
    seen = setup.fake.requests[-1]
    assert seen.path == "/openai/deployments/prod-4o/chat/completions"
    assert seen.query["api-version"] == "2024-10-21"  # AZURE_OPENAI_API_VERSION
    assert "authorization" not in seen.headers


def test_a_request_naming_no_deployment_is_refused_before_forwarding(setup: Setup) -> None:
    before = len(setup.fake.requests)
    response = httpx.post(
        setup.proxy.url + "/v1/chat/completions",
        json={"messages": MESSAGES},
        headers={"api-key": setup.creds.token},
        timeout=30,
    )
    assert response.status_code == 400
    assert "deployment" in response.json()["error"]["message"]
    assert len(setup.fake.requests) == before


def test_an_azure_path_is_authenticated_like_any_v1_path(setup: Setup) -> None:
    response = httpx.post(
        setup.proxy.url + "/openai/deployments/x/chat/completions?api-version=1",
        json={"messages": MESSAGES},
        headers={"api-key": "sk-unknown-token"},
        timeout=30,
    )
    assert response.status_code == 401  # the hot path's refusal, not the web app's 404
    assert response.json()["error"]["code"] == "invalid_api_key"
