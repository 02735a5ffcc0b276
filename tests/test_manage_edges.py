"""The management API at its edges: OPTIONS and Allow, NUL characters, a schemathesis run."""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest

from shared.management import OPERATIONS
from tests.manage_client import Api
from tests.test_manage_api import UPSTREAM_KEY, api, make_project, sample_path  # noqa: F401


def _methods_by_path() -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for op in OPERATIONS:
        found[op.path].add(op.method)
    return found


def test_options_and_405_name_every_method_of_a_path(api: Api) -> None:  # noqa: F811
    for path, methods in _methods_by_path().items():
        expected = set(methods) | ({"HEAD"} if "GET" in methods else set())
        reply = api.client.options(sample_path(path))
        assert reply.status_code == 204, (path, reply.text)
        allow = {m.strip() for m in reply.headers["allow"].split(",")}
        assert allow == expected | {"OPTIONS"}, path
        wrong = "PUT" if "PUT" not in methods else "DELETE"
        refused = api.client.request(wrong, sample_path(path))
        assert refused.status_code == 405, path
        assert {m.strip() for m in refused.headers["allow"].split(",")} == expected, path
        assert refused.json()["error"]["code"] == "method_not_allowed"


def test_options_needs_the_management_token(api: Api) -> None:  # noqa: F811
    with httpx.Client(base_url=str(api.client.base_url)) as anonymous:
        assert anonymous.options("/projects").status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("POST", "/projects", {"json": {"name": "n\x00", "api_key": UPSTREAM_KEY}}),
        ("POST", "/projects", {"json": {"name": "n", "api_key": "k\x00"}}),
        ("POST", "/tokens", {"json": {"project_id": "{pid}", "label": "a\x00b"}}),
        ("GET", "/tokens", {"params": {"project_id": "\x00"}}),
        ("GET", "/audit", {"params": {"action": "x\x00"}}),
        ("GET", "/projects/a%00b", {}),
        ("PATCH", "/projects/{pid}", {"json": {"name": "\x00"}}),
        ("POST", "/cache/purge", {"json": {"path_prefix": "/v1\x00"}}),
    ],
)
def test_a_nul_character_is_bad_input_not_a_crash(
    api: Api,  # noqa: F811
    method: str,
    path: str,
    kw: dict[str, dict[str, str]],
) -> None:
    pid = make_project(api, "nul")
    path = path.replace("{pid}", pid)
    for part in ("json", "params"):
        if part in kw:
            kw = {part: {k: v.replace("{pid}", pid) for k, v in kw[part].items()}}
    message = api.error(method, path, 400, "invalid_request", **kw)  # type: ignore[arg-type]
    assert "NUL" in message
    assert api.ok("GET", "/audit")["data"][0]["action"] == "project.create"  # nothing audited
