"""The model a request names (JSON or multipart body), checked against the caller's scope."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP

import orjson

from shared.errors import ModelNotAllowed
from shared.scopes import ModelScope

#: POST endpoints whose body names the model to run (``/v1/responses/{id}`` and other
#: sub-resources name none).
MODEL_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    }
)


#: Endpoints whose requests name models the proxy cannot see (a batch's input file): refused
#: for a scoped token, since its scope could not be kept.
UNCHECKABLE = ("/v1/batches",)


def names_model(method: str, rest: str) -> bool:
    """Whether a scope must look at this request (``rest``: the path below ``/v1``)."""
    if method != "POST":
        return False
    path = "/v1" + rest.rstrip("/")
    return path in MODEL_ENDPOINTS or path.startswith(UNCHECKABLE)


def model_of(body: bytes, content_type: bytes | None) -> str | None:
    """The ``model`` of a JSON object body or of a multipart form, or None when it cannot be
    read (absent, not text, or a body that is neither)."""
    kind = (content_type or b"").split(b";", 1)[0].strip().lower()
    if kind == b"multipart/form-data":
        return _form_model(body, content_type or b"")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) and model else None


def _form_model(body: bytes, content_type: bytes) -> str | None:
    # The standard library's MIME parser, given the request's own Content-Type as the head.
    try:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type + b"\r\n\r\n" + body
        )
    except (ValueError, TypeError, UnicodeError):
        return None
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "model":
            value = part.get_payload(decode=True)
            if not isinstance(value, bytes):
                return None
            try:
                text = value.decode("utf-8").strip()
            except UnicodeDecodeError:
                return None
            return text or None
    return None


def check_model(
    scope: ModelScope,
    rest: str,
    body: bytes | None,
    content_type: bytes | None,
    deployment: str = "",
) -> None:
    """Refuse (400 ``model_not_allowed``) a model outside ``scope``, or one that cannot be read.
    On an Azure-shaped path the name checked is its ``deployment``: that name, not the body's
    model, decides what runs (docs/providers.md, deployment tables)."""
    if ("/v1" + rest).startswith(UNCHECKABLE):
        raise ModelNotAllowed(
            "This token may use only some models, and a batch's models cannot be checked."
        )
    model = deployment or (model_of(body, content_type) if body else None)
    if model is None:
        raise ModelNotAllowed(
            "This token may use only some models, and the request's model cannot be read."
        )
    if not scope.allows(model):
        shown = model if len(model) <= 100 else model[:100] + "…"
        raise ModelNotAllowed(f"This token may not use the model {shown!r}.")
