"""The router's answers are the same the first time and every time after: a path it remembers
is still judged by method, a refused path stays refused, and a query is always checked."""

from __future__ import annotations

import pytest

from proxy.routing import Route, Router
from shared.errors import LLMProxyError, MethodNotAllowed, RouteNotFound, UserError

ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/v1/files")


def _answer(router: Router, method: str, path: bytes, query: bytes) -> Route | type:
    try:
        return router.match(method, path, query)
    except LLMProxyError as exc:
        return type(exc)


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("POST", b"/v1/chat/completions", b"", Route("/chat/completions", "/v1/chat/completions")),
        ("GET", b"/v1/models", b"", Route("/models", "/v1/models")),
        ("DELETE", b"/v1/models", b"", MethodNotAllowed),
        ("GET", b"/v1/files/../models", b"", RouteNotFound),
        ("GET", b"/v1/%2e%2e/admin", b"", RouteNotFound),
        ("GET", b"/v1/unknown", b"", RouteNotFound),
        ("GET", b"/v1/models", b"api_key=sk-1", UserError),
        ("GET", b"/v1/files", b"limit=2", Route("/files", "/v1/files")),
        (
            "POST",
            b"/openai/deployments/gpt4o/chat/completions",
            b"",
            Route("/chat/completions", "/v1/chat/completions", "gpt4o"),
        ),
    ],
)
def test_every_answer_is_the_same_on_repeat(
    method: str, path: bytes, query: bytes, expected: Route | type
) -> None:
    router = Router(ENDPOINTS, ("GET", "POST"))
    for _ in range(3):
        assert _answer(router, method, path, query) == expected


def test_a_remembered_path_is_still_judged_by_method_and_query() -> None:
    router = Router(ENDPOINTS, ("GET", "POST"))
    assert router.match("GET", b"/v1/models", b"") == Route("/models", "/v1/models")
    with pytest.raises(MethodNotAllowed):
        router.match("PUT", b"/v1/models", b"")
    with pytest.raises(UserError):
        router.match("GET", b"/v1/models", b"key=sk-1")


def test_many_distinct_paths_are_all_answered() -> None:
    router = Router(ENDPOINTS, ("GET", "POST"))
    for i in range(3000):  # past what it remembers
        assert router.match("GET", b"/v1/files/file-%d" % i, b"").rest == f"/files/file-{i}"
    with pytest.raises(RouteNotFound):
        router.match("GET", b"/v1/files/../x", b"")
