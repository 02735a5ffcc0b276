"""The management API's OpenAPI 3.1 document, generated from the route table."""

from __future__ import annotations

from typing import Any

from proxy.manage.routes import ENDPOINTS, Endpoint
from proxy.manage.schemas import SCHEMAS
from shared.management import Field

MOUNT = "/manage"
OPENAPI_PATH = "/openapi.json"

_ERRORS = {
    "400": "Bad input: malformed JSON, an unknown or missing field, a value out of range.",
    "401": "Missing or wrong management token.",
    "404": "No such project or token.",
    "409": "A project with that name exists.",
    "503": "The management API is disabled (MANAGEMENT_TOKEN is unset).",
}


def _error_responses(endpoint: Endpoint) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    codes = ["400", "401", "503"]
    # Every reference to a project or token may name none (and a name may be ambiguous).
    if any(f.name in ("project_id", "token_id") for f in endpoint.fields):
        codes += ["404", "409"]
    elif endpoint.operation_id == "createProject":
        codes.append("409")
    return {code: {"description": _ERRORS[code], **ref} for code in sorted(codes)}


def _body_schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {f.name: f.schema() for f in fields},
        "additionalProperties": False,
    }
    required = [f.name for f in fields if f.required]
    if required:
        schema["required"] = required
    return schema


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": f.name, "in": where, "required": where == "path" or f.required, "schema": schema}
        for where in ("path", "query")
        for f in endpoint.located(where)
        for schema in [f.schema() | ({"minLength": 1} if where == "path" else {})]
    ]
    op: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.path.split("/")[1]],
        "responses": {
            str(endpoint.status): {
                "description": endpoint.summary,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{endpoint.response}"}
                    }
                },
            },
            **_error_responses(endpoint),
        },
    }
    if endpoint.description:
        op["description"] = endpoint.description
    if params:
        op["parameters"] = params
    body = endpoint.located("body")
    if body:
        op["requestBody"] = {
            "required": any(f.required for f in body),
            "content": {"application/json": {"schema": _body_schema(body)}},
        }
    return op


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document; paths are absolute (they include the ``/manage`` mount point)."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(MOUNT + endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    paths[MOUNT + OPENAPI_PATH] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "tags": ["meta"],
            "responses": {"200": {"description": "The OpenAPI document."}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-proxy management API",
            "version": version,
            "description": (
                "Projects, tokens, usage and the audit log of an llm-proxy deployment; the "
                "`llm-proxy manage` commands use it with --api-url. Every endpoint needs "
                "`Authorization: Bearer <MANAGEMENT_TOKEN>`."
            ),
        },
        "security": [{"managementToken": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "managementToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's MANAGEMENT_TOKEN. Proxy tokens are refused.",
                }
            },
        },
    }
