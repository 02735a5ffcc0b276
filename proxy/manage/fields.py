"""Requests read against declared fields: JSON bodies, query strings and path parameters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from shared.errors import UserError
from shared.management import Field, Operation


def _check_names(given: Iterable[str], fields: tuple[Field, ...], what: str) -> None:
    known = {f.name for f in fields}
    for name in given:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise UserError(f"unknown {what} {name!r} (expected: {allowed})")


def _collect(fields: tuple[Field, ...], present: Mapping[str, Any], parse: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        if f.name in present:
            # Types only: ranges and checks are the service's, so that a refusal is audited
            # the same whether the CLI runs locally or through this API.
            out[f.name] = parse(f, present[f.name])
        elif f.required:
            raise UserError(f.missing or f"{f.name} is required")
    return out


def parse_body(raw: bytes, fields: tuple[Field, ...]) -> dict[str, Any]:
    """A JSON object body checked against ``fields``: unknown members, missing required ones
    and wrong types are refused with a message naming the member. An empty body is ``{}``."""
    if raw.strip():
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UserError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UserError("the request body must be a JSON object")
    else:
        data = {}
    _check_names(data, fields, "field")
    return _collect(fields, data, Field.parse_json)


def parse_query(params: Mapping[str, str], fields: tuple[Field, ...]) -> dict[str, Any]:
    """Query parameters checked against ``fields`` like a body."""
    _check_names(params, fields, "query parameter")
    return _collect(fields, params, Field.parse_text)


def parse_inputs(
    op: Operation[Any], path: Mapping[str, str], query: Mapping[str, str], body: bytes
) -> Any:
    """The operation's input dataclass, built from one request."""
    values = _collect(op.located("path"), path, Field.parse_text)
    values |= parse_query(query, op.located("query"))
    if op.takes_body:
        values |= parse_body(body, op.located("body"))
    return op.inputs(**values)
