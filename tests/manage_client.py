"""An HTTP client for the management API that checks every reply against the published schema."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.schema_check import check


class Api:
    """``api.post("/projects", json=...)`` with the management token; each reply is checked
    against the response schema /manage/openapi.json declares for that path, method and status."""

    def __init__(self, base_url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=base_url + "/manage", headers=headers, timeout=30)
        self._document: dict[str, Any] | None = None

    @property
    def document(self) -> dict[str, Any]:
        if self._document is None:
            reply = self.client.get("/openapi.json")
            assert reply.status_code == 200, reply.text
            self._document = reply.json()
        return self._document

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        reply = self.client.request(method, path, **kw)
        self.check(method, path, reply)
        return reply

    def check(self, method: str, path: str, reply: httpx.Response) -> None:
        body = reply.json()
        if reply.status_code >= 400:
            check(body, {"$ref": "#/components/schemas/Error"}, self.document)
            return
        operation = self.operation(method, path.split("?", 1)[0])
        declared = operation["responses"].get(str(reply.status_code))
        assert declared is not None, f"{method} {path}: undocumented status {reply.status_code}"
        check(body, declared["content"]["application/json"]["schema"], self.document)

    def operation(self, method: str, path: str) -> dict[str, Any]:
        for template, ops in self.document["paths"].items():
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, "/manage" + path) and method.lower() in ops:
                op: dict[str, Any] = ops[method.lower()]
                return op
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        reply = self.request(method, path, **kw)
        assert reply.status_code == status, (reply.status_code, reply.text)
        return reply.json()

    def error(self, method: str, path: str, status: int, code: str, **kw: Any) -> str:
        """Make a request that must fail; return its error message."""
        reply = self.request(method, path, **kw)
        assert reply.status_code == status, (reply.status_code, reply.text)
        error = reply.json()["error"]
        assert error["code"] == code, error
        assert error["message"] and error["type"]
        return str(error["message"])

    def close(self) -> None:
        self.client.close()
