"""Fault suite: hostile credential placement. A token in the query string never reaches the
upstream, and more than one credential header is refused as nginx refuses it (400)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.routing import CREDENTIAL_PARAMS, query_credential
from shared.crypto import new_key
from tests.proxy_process import UNLIMITED, Provisioned, ProxyProcess, provision
from tests.upstream_fake import FakeUpstream

pytestmark = pytest.mark.fault


class Served:
    def __init__(self, proxy: ProxyProcess, fake: FakeUpstream, cred: Provisioned) -> None:
        self.proxy, self.fake, self.cred = proxy, fake, cred

    def get(self, target: str, headers: list[tuple[str, str]]) -> httpx.Response:
        self.fake.reset()
        with httpx.Client(timeout=30) as client:
            return client.get(self.proxy.url + target, headers=headers)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cwd = tmp_path_factory.mktemp("creds")
    fake = FakeUpstream().start()
    env = {**UNLIMITED, "ENCRYPTION_KEY": new_key(), "HTTP_CACHE_ENABLED": "false"}
    cred = provision(env, cwd, fake.base_url, rpm=0)
    proxy = ProxyProcess(env=env, cwd=cwd, workers=1).start()
    yield Served(proxy, fake, cred)
    proxy.stop()
    fake.stop()


@pytest.mark.parametrize(
    "query",
    [
        "api_key={token}",
        "key={token}",
        "access_token={token}",
        "limit=5&API_KEY={token}",
        "api%5Fkey={token}",
        "apikey={token}",
        "x-api-key={token}",
        "token={token}",
    ],
)
def test_credential_in_query_is_refused_and_never_forwarded(served: Served, query: str) -> None:
    token = served.cred.token
    bearer = [("Authorization", f"Bearer {token}")]
    resp = served.get("/v1/models?" + query.format(token=token), bearer)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "invalid_request" and "query" in error["message"]
    assert token not in resp.text
    assert served.fake.requests == []


def test_ordinary_query_is_forwarded(served: Served) -> None:
    resp = served.get(
        "/v1/models?api-version=2024-10-01&keyword=x",
        [("Authorization", f"Bearer {served.cred.token}")],
    )
    assert resp.status_code == 200
    (seen,) = served.fake.requests
    assert seen.query == "api-version=2024-10-01&keyword=x"


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer garbage"), ("Authorization", "Bearer {token}")],
        [("Authorization", "Bearer {token}"), ("Authorization", "Bearer garbage")],
        [("Authorization", "Bearer {token}"), ("Authorization", "Bearer {token}")],
        [("Authorization", "Bearer {token}"), ("api-key", "other-token")],
        [("x-api-key", "{token}"), ("api-key", "other-token")],
        [("api-key", "{token}"), ("api-key", "{token}x")],
    ],
)
def test_more_than_one_credential_header_is_400(
    served: Served, headers: list[tuple[str, str]]
) -> None:
    token = served.cred.token
    resp = served.get("/v1/models", [(k, v.format(token=token)) for k, v in headers])
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_request"
    assert served.fake.requests == []


def test_the_same_token_in_authorization_and_api_key_is_one_credential(served: Served) -> None:
    token = served.cred.token
    resp = served.get("/v1/models", [("Authorization", f"Bearer {token}"), ("api-key", token)])
    assert resp.status_code == 200
    (seen,) = served.fake.requests
    assert token not in str(seen.headers)


_NAMES = st.sampled_from([*CREDENTIAL_PARAMS, "model", "limit", "api-version", "keys", "tok"])
_VALUES = st.text(alphabet="abcXYZ019-_.~%+=", max_size=8)


@given(st.lists(st.tuples(_NAMES, _VALUES, st.booleans(), st.booleans()), max_size=5))
def test_query_credential_agrees_with_urllib(
    pairs: list[tuple[str, str, bool, bool]],
) -> None:
    parts = []
    for name, value, upper, escaped in pairs:
        name = name.upper() if upper else name
        if escaped:
            name = urllib.parse.quote(name, safe="")
            name = name.replace("_", "%5F").replace("-", "%2D")
        parts.append(f"{name}={value}")
    query = "&".join(parts)
    names = {k.lower() for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    expected = bool(names & set(CREDENTIAL_PARAMS))
    assert (query_credential(query.encode()) is not None) == expected
