"""Provider kinds: where an upstream's key goes, which client headers pass, how paths map, how
usage is read and which error envelope a route answers with."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.deployments import deployments_of
from shared.errors import LLMProxyError, Overloaded, UserError, error_body
from shared.kinds import ANTHROPIC, AZURE_OPENAI, OPENAI, OPENAI_COMPATIBLE

#: Anthropic's API version when the client names none (the one every SDK release still sends).
ANTHROPIC_VERSION = "2023-06-01"
#: Endpoints of Anthropic's Messages API; requests to them get errors in Anthropic's envelope.
MESSAGES_ENDPOINT = "/v1/messages"
#: Azure endpoints that live under a deployment; the others (models, files, batches) do not.
_DEPLOYMENT_PATHS = ("/chat/completions", "/completions", "/embeddings", "/audio/", "/images/")


@dataclass(frozen=True, slots=True)
class Provider:
    """What one kind of upstream expects. ``passes``: client headers forwarded besides the
    common allowlist; ``defaults``: headers set when the client sent none; ``endpoints``: the
    ``/v1`` endpoints a project of this kind serves (None: any allowlisted one but Messages)."""

    kind: str
    key_header: str
    key_prefix: str = ""
    passes: frozenset[bytes] = frozenset()
    defaults: tuple[tuple[str, str], ...] = ()
    endpoints: frozenset[str] | None = None
    maps_paths: bool = False  # the upstream path is not the client's (Azure deployments)

    def serves(self, endpoint: str) -> bool:
        if self.endpoints is None:
            return endpoint != MESSAGES_ENDPOINT
        return endpoint in self.endpoints


PROVIDERS: dict[str, Provider] = {
    OPENAI: Provider(OPENAI, "authorization", "Bearer "),
    OPENAI_COMPATIBLE: Provider(OPENAI_COMPATIBLE, "authorization", "Bearer "),
    AZURE_OPENAI: Provider(AZURE_OPENAI, "api-key", maps_paths=True),
    ANTHROPIC: Provider(
        ANTHROPIC,
        "x-api-key",
        passes=frozenset({b"anthropic-version", b"anthropic-beta"}),
        defaults=(("anthropic-version", ANTHROPIC_VERSION),),
        endpoints=frozenset({MESSAGES_ENDPOINT, "/v1/models"}),
    ),
}


@dataclass(frozen=True, slots=True)
class Deployments:
    """An Azure upstream's deployment for each model (a model not named is its own deployment)
    and the api-version it is sent ("": the client's, else AZURE_OPENAI_API_VERSION)."""

    names: Mapping[str, str] = field(default_factory=dict, hash=False)  # a Target stays hashable
    api_version: str = ""

    @classmethod
    def of(cls, stored: str | None, api_version: str | None) -> Deployments:
        if not stored and not api_version:
            return NO_DEPLOYMENTS
        return cls(deployments_of(stored), api_version or "")


NO_DEPLOYMENTS = Deployments()


def provider_of(kind: str) -> Provider:
    """The provider of a stored kind; an unknown one (a newer release's) reads as OpenAI."""
    return PROVIDERS.get(kind) or PROVIDERS[OPENAI]


def azure_target(
    rest: str, deployment: str, query: bytes, body: Any, table: Deployments, api_version: str
) -> bytes:
    """The Azure OpenAI path for a ``/v1`` request: deployment endpoints under
    ``/openai/deployments/{deployment}`` (the name the client's Azure path gives, else the
    body's model, looked up in the upstream's table), the others under ``/openai``;
    ``api-version`` the upstream's, else the client's, else ``api_version`` (the default)."""
    if rest.startswith(_DEPLOYMENT_PATHS) or rest in _DEPLOYMENT_PATHS:
        name = deployment or _model_of(body)
        if not name:
            raise UserError(
                "An Azure OpenAI project needs a deployment: name it as the request's model."
            )
        name = table.names.get(name, name)
        path = "/openai/deployments/" + urllib.parse.quote(name, safe="") + rest
    else:
        path = "/openai" + rest
    version = table.api_version
    if version:  # the operator's pin wins over the client's
        query = _without_param(query, b"api-version")
    elif not _has_param(query, b"api-version"):
        version = api_version
    if version:
        param = b"api-version=" + version.encode()
        query = query + b"&" + param if query else param
    return path.encode() + b"?" + query


def _model_of(body: Any) -> str:
    if not isinstance(body, bytes) or b'"model"' not in body:
        return ""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) else ""


def _has_param(query: bytes, name: bytes) -> bool:
    return any(part.partition(b"=")[0] == name for part in query.split(b"&")) if query else False


def _without_param(query: bytes, name: bytes) -> bytes:
    return b"&".join(p for p in query.split(b"&") if p and p.partition(b"=")[0] != name)


# --- error envelopes ---

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


def speaks_anthropic(path: str) -> bool:
    """Whether a request path is Anthropic's Messages API (its errors use that envelope)."""
    return path.startswith(MESSAGES_ENDPOINT) and (
        len(path) == len(MESSAGES_ENDPOINT) or path[len(MESSAGES_ENDPOINT)] == "/"
    )


def anthropic_error_body(exc: LLMProxyError) -> dict[str, Any]:
    """Anthropic's envelope ``{"type": "error", "error": {"type", "message"}}``."""
    if isinstance(exc, Overloaded):
        kind = "overloaded_error"
    else:
        kind = _ANTHROPIC_TYPES.get(exc.status) or (
            "invalid_request_error" if exc.status < 500 else "api_error"
        )
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_body_for(path: str, exc: LLMProxyError) -> dict[str, Any]:
    """The error envelope of the API the client is speaking on ``path``."""
    return anthropic_error_body(exc) if speaks_anthropic(path) else error_body(exc)
