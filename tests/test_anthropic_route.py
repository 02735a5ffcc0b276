"""Anthropic's Messages API through the real server: the official anthropic SDK works unchanged
(stream, non-stream, count_tokens, models) against a fake that speaks Anthropic's event types;
the project's key goes out as x-api-key, fields such as cache_control pass untouched, usage
(cache writes and reads included) lands on the event, errors come in Anthropic's envelope."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.provider_fakes import USAGE, WORDS, AnthropicFake
from tests.provider_kit import event_row, provision_kind
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess

KEY = "sk-ant-upstream-KEY-0123456789"
SYSTEM = [
    {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
]
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]


@dataclass
class Setup:
    fake: AnthropicFake
    proxy: ProxyProcess
    claude: Provisioned
    gpt: Provisioned  # an openai project: Messages is not its API
    env: dict[str, str]
    cwd: Path
    clients: list[anthropic.Anthropic] = field(default_factory=list)

    def client(self, **kw: object) -> anthropic.Anthropic:
        made = anthropic.Anthropic(
            base_url=self.proxy.url, api_key=self.claude.token, max_retries=0, **kw
        )
        self.clients.append(made)  # closed at teardown: no connection left for the GC
        return made


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cwd = tmp_path_factory.mktemp("anthropic")
    fake = AnthropicFake().start()
    env = dict(UNLIMITED)
    claude = provision_kind(env, cwd, fake.base_url, "anthropic", name="claude", api_key=KEY)
    gpt = provision_kind(env, cwd, fake.base_url, "openai", name="gpt", api_key=KEY)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=1).start()
    setup = Setup(fake, proxy, claude, gpt, env, cwd)
    yield setup
    for made in setup.clients:
        made.close()
    proxy.stop()
    fake.stop()


def rid() -> str:
    return "req-" + uuid.uuid4().hex


def test_the_sdk_creates_a_message_and_the_event_has_its_cache_counts(setup: Setup) -> None:
    request_id = rid()
    reply = setup.client().messages.create(
        model="claude-fake",
        max_tokens=64,
        system=SYSTEM,  # type: ignore[arg-type]
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id},
    )
    assert reply.content[0].text == "".join(WORDS)  # type: ignore[union-attr]
    assert reply.usage.cache_read_input_tokens == USAGE["cache_read_input_tokens"]
    seen = setup.fake.requests[-1]
    assert seen.headers["x-api-key"] == KEY
    assert "authorization" not in seen.headers
    # the version the SDK sent, passed as it was
    assert seen.headers["anthropic-version"] == setup.client().default_headers["anthropic-version"]
    assert seen.json()["system"] == SYSTEM  # cache_control and every field untouched
    row = event_row(setup.env, setup.cwd, request_id)
    prompt = (
        USAGE["input_tokens"]
        + USAGE["cache_creation_input_tokens"]
        + USAGE["cache_read_input_tokens"]
    )
    assert (row["status"], row["model"], row["usage_source"]) == (200, "claude-fake", "")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, USAGE["output_tokens"])
    assert row["cache_creation_tokens"] == USAGE["cache_creation_input_tokens"]
    assert row["cache_read_tokens"] == USAGE["cache_read_input_tokens"]
    assert row["attempts"] == 1


def test_the_sdk_streams_a_message_and_usage_comes_from_start_and_delta(setup: Setup) -> None:
    request_id = rid()
    with setup.client().messages.stream(
        model="claude-fake",
        max_tokens=64,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(WORDS)
    assert final.usage.output_tokens == USAGE["output_tokens"]
    assert final.usage.input_tokens == USAGE["input_tokens"]
    row = event_row(setup.env, setup.cwd, request_id)
    assert row["stream"]
    assert row["completion_tokens"] == USAGE["output_tokens"]  # the delta's, not the start's 1
    assert row["cache_creation_tokens"] == USAGE["cache_creation_input_tokens"]
    assert row["prompt_tokens"] == (
        USAGE["input_tokens"]
        + USAGE["cache_creation_input_tokens"]
        + USAGE["cache_read_input_tokens"]
    )
    assert row["usage_source"] == ""


def test_count_tokens_and_models_pass_and_bill_nothing(setup: Setup) -> None:
    request_id = rid()
    counted = setup.client().messages.count_tokens(
        model="claude-fake",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id},
    )
    assert counted.input_tokens == 42
    assert setup.fake.requests[-1].path == "/v1/messages/count_tokens"
    row = event_row(setup.env, setup.cwd, request_id)
    assert (row["status"], row["prompt_tokens"], row["usage_source"]) == (200, 0, "")
    models = setup.client().models.list()
    assert [m.id for m in models.data] == ["claude-fake"]


def test_an_x_api_key_client_without_a_version_gets_the_default_and_its_beta_passes(
    setup: Setup,
) -> None:
    response = httpx.post(
        setup.proxy.url + "/v1/messages",
        json={"model": "claude-fake", "max_tokens": 8, "messages": MESSAGES},
        headers={"x-api-key": setup.claude.token, "anthropic-beta": "prompt-caching-2024-07-31"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    seen = setup.fake.requests[-1]
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert seen.headers["x-api-key"] == KEY  # the client's token never travels on


def test_a_bad_token_is_refused_in_anthropics_envelope(setup: Setup) -> None:
    client = anthropic.Anthropic(base_url=setup.proxy.url, api_key="sk-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="claude-fake", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid or missing API key."},
    }


def test_an_upstream_error_reaches_the_sdk_as_anthropic_sent_it(setup: Setup) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        setup.client().messages.create(model="fail-500", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.status_code == 500
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream says 500"},
    }


def test_a_stream_cut_mid_way_ends_with_an_anthropic_error_event(setup: Setup) -> None:
    request_id = rid()
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        setup.client().messages.stream(
            model="cut",
            max_tokens=8,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"x-request-id": request_id},
        ) as stream,
    ):
        received.extend(stream.text_stream)
    assert received == [WORDS[0]]  # what came before the break reached the client
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    row = event_row(setup.env, setup.cwd, request_id)
    assert row["error"] and row["stream"]


def test_messages_belong_to_anthropic_projects_and_chat_to_the_others(setup: Setup) -> None:
    before = len(setup.fake.requests)
    wrong = httpx.post(
        setup.proxy.url + "/v1/messages",
        json={"model": "gpt", "max_tokens": 8, "messages": MESSAGES},
        headers={"authorization": f"Bearer {setup.gpt.token}"},
        timeout=30,
    )
    assert wrong.status_code == 404
    assert wrong.json()["type"] == "error"
    assert wrong.json()["error"]["type"] == "not_found_error"
    chat = httpx.post(
        setup.proxy.url + "/v1/chat/completions",
        json={"model": "claude-fake", "messages": MESSAGES},
        headers={"x-api-key": setup.claude.token},
        timeout=30,
    )
    assert chat.status_code == 404
    assert chat.json()["error"]["code"] == "not_found"  # OpenAI's envelope on OpenAI's path
    assert len(setup.fake.requests) == before  # nothing forwarded
