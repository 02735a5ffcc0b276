"""Provider kinds as pure functions: where the key goes, which headers pass, Azure paths, the
error envelope of each route, and Anthropic stream usage however the bytes are cut."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.headers import upstream_headers
from proxy.routing import Router
from proxy.upstream.providers import (
    NO_DEPLOYMENTS,
    PROVIDERS,
    Deployments,
    azure_target,
    error_body_for,
    provider_of,
)
from proxy.usage_anthropic import AnthropicSseUsage
from shared.config import DEFAULT_ENDPOINTS
from shared.errors import AuthError, Overloaded, RateLimited, RouteNotFound, UserError
from shared.kinds import KINDS
from tests.provider_fakes import USAGE, stream_events

CLIENT = [
    (b"authorization", b"Bearer sk-client-token"),
    (b"x-api-key", b"sk-client-token"),
    (b"content-type", b"application/json"),
    (b"anthropic-version", b"2024-01-01"),
    (b"anthropic-beta", b"tools-1"),
]


@pytest.mark.parametrize(
    ("kind", "key_header", "key_value", "passes_anthropic"),
    [
        ("openai", "authorization", "Bearer K", False),
        ("openai-compatible", "authorization", "Bearer K", False),
        ("azure-openai", "api-key", "K", False),
        ("anthropic", "x-api-key", "K", True),
    ],
)
def test_each_kind_puts_the_key_where_its_api_wants_it(
    kind: str, key_header: str, key_value: str, passes_anthropic: bool
) -> None:
    out = upstream_headers(CLIENT, PROVIDERS[kind], "K", "rid", forward_org=False)
    assert out[key_header] == key_value
    others = {"authorization", "x-api-key", "api-key"} - {key_header}
    assert not others & set(out)  # the client's token never travels on
    assert ("anthropic-version" in out) is passes_anthropic
    assert ("anthropic-beta" in out) is passes_anthropic


def test_anthropic_gets_a_default_version_only_when_the_client_sends_none() -> None:
    out = upstream_headers([], PROVIDERS["anthropic"], "K", "rid", forward_org=False)
    assert out["anthropic-version"] == "2023-06-01"
    out = upstream_headers(CLIENT, PROVIDERS["anthropic"], "K", "rid", forward_org=False)
    assert out["anthropic-version"] == "2024-01-01"


def test_every_kind_has_a_provider_and_an_unknown_stored_kind_reads_as_openai() -> None:
    assert set(PROVIDERS) == set(KINDS)
    assert provider_of("from-the-future").kind == "openai"


@pytest.mark.parametrize(
    ("rest", "deployment", "query", "body", "expected"),
    [
        (
            "/chat/completions",
            "",
            b"",
            b'{"model":"gpt 4o"}',
            b"/openai/deployments/gpt%204o/chat/completions?api-version=V",
        ),
        (
            "/embeddings",
            "emb",
            b"api-version=2024-02-01",
            b'{"model":"ignored"}',
            b"/openai/deployments/emb/embeddings?api-version=2024-02-01",
        ),
        ("/models", "", b"", None, b"/openai/models?api-version=V"),
        ("/files", "", b"purpose=x", None, b"/openai/files?purpose=x&api-version=V"),
    ],
)
def test_azure_paths(
    rest: str, deployment: str, query: bytes, body: bytes | None, expected: bytes
) -> None:
    assert azure_target(rest, deployment, query, body, NO_DEPLOYMENTS, "V") == expected


_TABLE = Deployments({"gpt-4o": "prod-4o", "text-embedding-3-small": "emb-small"}, "2025-01-01")


@pytest.mark.parametrize(
    ("rest", "deployment", "query", "body", "expected"),
    [
        (  # a plain OpenAI client: the body's model, looked up in the table
            "/chat/completions",
            "",
            b"",
            b'{"model":"gpt-4o"}',
            b"/openai/deployments/prod-4o/chat/completions?api-version=2025-01-01",
        ),
        (  # an AzureOpenAI client naming the model as its deployment: looked up too
            "/embeddings",
            "text-embedding-3-small",
            b"api-version=2024-02-01",
            None,
            b"/openai/deployments/emb-small/embeddings?api-version=2025-01-01",
        ),
        (  # a name the table does not hold is the deployment itself; other params stay
            "/chat/completions",
            "my-own",
            b"a=1&api-version=2024-02-01&b=2",
            b'{"model":"gpt-4o"}',
            b"/openai/deployments/my-own/chat/completions?a=1&b=2&api-version=2025-01-01",
        ),
        ("/models", "", b"", None, b"/openai/models?api-version=2025-01-01"),
    ],
)
def test_azure_deployment_table_and_pinned_api_version(
    rest: str, deployment: str, query: bytes, body: bytes | None, expected: bytes
) -> None:
    assert azure_target(rest, deployment, query, body, _TABLE, "V") == expected


def test_a_table_without_an_api_version_keeps_the_clients() -> None:
    table = Deployments({"gpt-4o": "prod-4o"})
    got = azure_target("/chat/completions", "gpt-4o", b"api-version=C", None, table, "V")
    assert got == b"/openai/deployments/prod-4o/chat/completions?api-version=C"


def test_azure_without_a_deployment_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="deployment"):
        azure_target("/chat/completions", "", b"", b'{"messages":[]}', NO_DEPLOYMENTS, "V")


def test_an_azure_shaped_path_routes_as_the_v1_path_it_stands_for() -> None:
    router = Router(tuple(DEFAULT_ENDPOINTS.split(",")), ("POST",))
    route = router.match("POST", b"/openai/deployments/my-dep/chat/completions", b"api-version=1")
    assert (route.rest, route.endpoint, route.deployment) == (
        "/chat/completions",
        "/v1/chat/completions",
        "my-dep",
    )
    for bad in (b"/openai/deployments/../chat/completions", b"/openai/deployments/x"):
        with pytest.raises(RouteNotFound):
            router.match("POST", bad, b"")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (AuthError(), "authentication_error"),
        (RateLimited(), "rate_limit_error"),
        (Overloaded(), "overloaded_error"),
        (UserError("bad"), "invalid_request_error"),
    ],
)
def test_messages_routes_answer_in_anthropics_envelope(exc: Exception, kind: str) -> None:
    assert isinstance(exc, AuthError | RateLimited | Overloaded | UserError)
    body = error_body_for("/v1/messages/count_tokens", exc)
    assert body == {"type": "error", "error": {"type": kind, "message": exc.message}}
    assert "error" in error_body_for("/v1/chat/completions", exc)
    assert error_body_for("/v1/messagesx", exc)["error"]["code"] == exc.code


def _stream() -> bytes:
    return b"".join(
        f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n".encode()
        for name, data in stream_events("claude-x")
    )


@given(st.lists(st.integers(min_value=1, max_value=4000), max_size=30))
def test_anthropic_stream_usage_is_the_same_however_the_bytes_are_cut(cuts: list[int]) -> None:
    data = _stream()
    reader = AnthropicSseUsage()
    sent = b""
    at = 0
    for cut in sorted(set(cuts)):
        sent += b"".join(reader.feed(data[at:cut]))
        at = max(at, min(cut, len(data)))
    sent += b"".join(reader.feed(data[at:]))
    reader.finish()
    usage = reader.result()
    assert sent == data  # passed through byte for byte
    assert usage.model == "claude-x"
    assert usage.completion_tokens == USAGE["output_tokens"]
    assert usage.cache_creation_tokens == USAGE["cache_creation_input_tokens"]
    assert usage.cache_read_tokens == USAGE["cache_read_input_tokens"]
    assert usage.prompt_tokens == (
        USAGE["input_tokens"]
        + USAGE["cache_creation_input_tokens"]
        + USAGE["cache_read_input_tokens"]
    )
    assert reader.deltas == 4
