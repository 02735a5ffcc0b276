"""Azure OpenAI deployments: a project's or upstream's table of model name -> deployment name,
and the ``api-version`` it is sent (docs/providers.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import orjson

from shared.errors import UserError

#: What a deployment name may be (Azure's rule, and what keeps it one safe path segment).
DEPLOYMENT_NAME = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}"
MAX_DEPLOYMENTS = 200
_DEPLOYMENT = re.compile(DEPLOYMENT_NAME)
# Azure's dated versions (2024-10-21, 2025-04-01-preview) and its v1 API's "preview"/"latest".
_API_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")


def check_deployments(table: Mapping[str, str]) -> dict[str, str]:
    """A model -> deployment table checked and in a stable order; ``{}`` removes the table."""
    if len(table) > MAX_DEPLOYMENTS:
        raise UserError(f"deployments takes at most {MAX_DEPLOYMENTS} models")
    out: dict[str, str] = {}
    for model, deployment in sorted(table.items()):
        model = model.strip()
        if not model or len(model) > 200 or any(c.isspace() or not c.isprintable() for c in model):
            raise UserError(f"deployments: not a model name: {model[:40]!r}")
        if not _DEPLOYMENT.fullmatch(deployment.strip()):
            raise UserError(
                f"deployments: {model}: a deployment name is 1-128 letters, digits, '.', '_' "
                f"or '-', got {deployment[:40]!r}"
            )
        out[model] = deployment.strip()
    return out


def parse_pairs(pairs: list[str], option: str = "--deployment") -> dict[str, str]:
    """``["gpt-4o=prod-4o", ...]`` as the CLI takes them (``MODEL=DEPLOYMENT`` each; an empty
    item adds nothing, so ``--deployment ''`` gives the empty table)."""
    table: dict[str, str] = {}
    for pair in pairs:
        if not pair.strip():
            continue
        model, sep, deployment = pair.rpartition("=")
        if not sep or not model.strip():
            raise UserError(f"{option} takes MODEL=DEPLOYMENT, got {pair[:60]!r}")
        if model.strip() in table:
            raise UserError(f"{option} names model {model.strip()!r} twice")
        table[model.strip()] = deployment
    return table


def check_api_version(text: str) -> str:
    """An Azure ``api-version`` (``2024-10-21``, ``2025-04-01-preview``); ``""`` removes it."""
    text = text.strip()
    if text and not _API_VERSION.fullmatch(text):
        raise UserError(f"api version must look like 2024-10-21, got {text[:40]!r}")
    return text


def stored_deployments(table: Mapping[str, str]) -> str | None:
    """The column's text: a JSON object; NULL for no table."""
    return orjson.dumps(dict(sorted(table.items()))).decode() if table else None


def deployments_of(text: str | None) -> dict[str, str]:
    """The table a column holds (``{}`` for NULL, or for text a newer release wrote otherwise)."""
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
