"""The management API under uvicorn over SQLite and Postgres: auth, lifecycle, errors, paging."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy.manage import create_management_app
from proxy.manage.routes import ENDPOINTS
from shared.clock import new_id, utcnow
from shared.config import Settings
from shared.crypto import Keyring
from shared.store.sqlite import SqliteStore
from tests.manage_client import Api
from tests.manage_server import ManagementServer
from tests.usage_data import record
from tests.usage_data import request_event as event

UPSTREAM_KEY = "sk-upstream-APITEST-0123456789abcdef"


@pytest.fixture
def api(management_server: ManagementServer, management_token: str) -> Iterator[Api]:
    client = Api(management_server.url, management_token)
    yield client
    client.close()


def sample_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", new_id(), path)


def make_project(api: Api, name: str = "team-a") -> str:
    body = {"name": name, "api_key": UPSTREAM_KEY}
    return str(api.ok("POST", "/projects", 201, json=body)["id"])


# --- auth ---


def test_every_endpoint_needs_the_management_token(
    management_server: ManagementServer, management_token: str, api: Api
) -> None:
    pid = make_project(api)
    proxy_token = api.ok("POST", "/tokens", 201, json={"project_id": pid})["token"]
    paths = [(ep.method, sample_path(ep.path)) for ep in ENDPOINTS]
    paths += [("GET", "/openapi.json"), ("GET", "/no-such-thing")]
    anonymous = httpx.Client(base_url=management_server.url + "/manage")
    for credentials in (
        None,
        "Bearer wrong-token",
        f"Bearer {proxy_token}",  # proxy tokens never authorise management
        f"Basic {management_token}",
        f"Bearer {management_token}x",
        f"Bearer {management_token[:-1]}",
        "Bearer",
    ):
        headers = {"Authorization": credentials} if credentials else {}
        for method, path in paths:
            reply = anonymous.request(method, path, headers=headers, json={})
            assert reply.status_code == 401, (credentials, method, path, reply.text)
            error = reply.json()["error"]
            assert error["code"] == "invalid_management_token"
            assert reply.headers["www-authenticate"] == "Bearer"
    assert [p["id"] for p in api.ok("GET", "/projects")["data"]] == [pid]
    # lower-case scheme is still the Bearer scheme
    reply = anonymous.get("/projects", headers={"Authorization": f"bearer {management_token}"})
    assert reply.status_code == 200
    anonymous.close()


def test_disabled_without_management_token(tmp_path: Path, encryption_key: str) -> None:
    env = {"DATABASE_URL": str(tmp_path / "m.db"), "ENCRYPTION_KEY": encryption_key}
    with ManagementServer(Settings.from_env(env)) as server, httpx.Client() as client:
        for method, path in [(ep.method, sample_path(ep.path)) for ep in ENDPOINTS] + [
            ("GET", "/openapi.json")
        ]:
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer x"}):
                reply = client.request(method, f"{server.url}/manage{path}", headers=headers)
                assert reply.status_code == 503, (method, path)
                error = reply.json()["error"]
                assert error["code"] == "management_disabled"
                assert "MANAGEMENT_TOKEN" in error["message"]


def test_request_id_is_echoed_and_audited(api: Api) -> None:
    reply = api.post(
        "/projects",
        json={"name": "r", "api_key": UPSTREAM_KEY},
        headers={"X-Request-ID": "deploy-42.a:b"},
    )
    assert reply.status_code == 201 and reply.headers["x-request-id"] == "deploy-42.a:b"
    pid = reply.json()["id"]
    bad = api.get(f"/projects/{pid}", headers={"X-Request-ID": "no spaces <allowed>"})
    assert bad.headers["x-request-id"] != "no spaces <allowed>"
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    assert api.get("/nope").headers["x-request-id"]

    (entry,) = api.ok("GET", "/audit", params={"action": "project.create"})["data"]
    assert entry["request_id"] == "deploy-42.a:b"
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["actor"] == "api:127.0.0.1"
    assert entry["target_id"] == pid and entry["outcome"] == "success"


# --- lifecycle ---


def test_full_lifecycle_over_http(
    api: Api, management_server: ManagementServer, db_env: dict[str, str]
) -> None:
    project = api.ok("POST", "/projects", 201, json={"name": "team-a", "api_key": UPSTREAM_KEY})
    pid = project["id"]
    assert project["base_url"] == "https://api.openai.com/v1" and project["is_active"] is True
    assert api.ok("GET", "/projects")["data"] == [project]
    assert api.ok("GET", f"/projects/{pid}") == {**project, "upstreams": [], "budgets": []}

    new = api.ok(
        "POST",
        "/tokens",
        201,
        json={"project_id": pid, "duration": 24, "max_requests": 1000, "label": "ci"},
    )
    tid, secret = new["id"], new["token"]
    assert secret.startswith("sk-llmp-") and new["prefix"] == secret[:12] + "…"
    expires = datetime.fromisoformat(new["expires_at"])
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(hours=24)

    shown = api.ok("GET", f"/tokens/{tid}")
    assert "token" not in shown and shown.pop("budgets") == []  # a token without a budget
    assert (shown["max_requests"], shown["request_count"], shown["state"]) == (1000, 0, "active")
    assert [t["id"] for t in api.ok("GET", "/tokens", params={"project_id": pid})["data"]] == [tid]
    assert api.ok("GET", "/tokens")["data"] == [shown]

    upd = api.ok("PATCH", f"/tokens/{tid}", json={"max_requests": 5, "duration": "7d"})
    assert upd["max_requests"] == 5 and upd["remaining_requests"] == 5
    assert api.ok("PATCH", f"/tokens/{tid}", json={"unlimited": True})["max_requests"] is None
    revoked = api.ok("POST", f"/tokens/{tid}/revoke")
    assert revoked["state"] == "revoked" and revoked["revoked"] == 1
    assert api.ok("POST", f"/tokens/{tid}/revoke")["revoked"] == 0
    again = api.ok("PATCH", f"/tokens/{tid}", json={"activate": True, "label": "back"})
    assert again["state"] == "active" and again["revoked_at"] is None and again["label"] == "back"

    api.ok("POST", "/tokens", 201, json={"project_id": pid, "duration": "never"})
    bulk = api.ok("POST", f"/projects/{pid}/revoke-tokens")
    assert bulk == {"project_id": pid, "revoked": 2}

    renamed = api.ok(
        "PATCH",
        f"/projects/{pid}",
        json={"name": "team-b", "base_url": "http://127.0.0.1:9/v1/", "api_key": UPSTREAM_KEY},
    )
    assert renamed["name"] == "team-b" and renamed["base_url"] == "http://127.0.0.1:9/v1"
    third = api.ok("POST", "/tokens", 201, json={"project_id": pid})
    off = api.ok("POST", f"/projects/{pid}/deactivate", json={"revoke_tokens": True})
    assert off["is_active"] is False and off["tokens_revoked"] == 1
    assert "inactive" in api.error(
        "POST", "/tokens", 400, "invalid_request", json={"project_id": pid}
    )
    on = api.ok("POST", f"/projects/{pid}/activate")
    assert on["is_active"] is True and on["tokens_revoked"] == 0

    record(
        Settings.from_env(db_env),
        [event(third, utcnow().timestamp(), prompt_tokens=3, completion_tokens=4, model="m")],
    )
    usage = api.ok("GET", f"/tokens/{third['id']}/usage")
    assert usage["token"]["request_count"] == 1 and usage["token"]["prompt_tokens"] == 3
    assert [e["model"] for e in usage["events"]] == ["m"]
    assert usage["next_before_event_id"] is None
    project_usage = api.ok("GET", f"/projects/{pid}/usage")
    assert project_usage["project"]["completion_tokens"] == 4
    assert project_usage["events"] == usage["events"]

    assert api.ok("POST", "/keys/rotate") == {"rotated": 0, "key_id": api_key_id(db_env)}
    deleted = api.ok("DELETE", f"/projects/{pid}")
    assert deleted == {"id": pid, "name": "team-b", "deleted": True}
    assert api.ok("GET", "/projects")["data"] == []
    api.error("GET", f"/tokens/{tid}", 404, "not_found")

    actions = {e["action"] for e in api.ok("GET", "/audit", params={"limit": 1000})["data"]}
    assert {
        "project.create",
        "project.update",
        "project.deactivate",
        "project.activate",
        "project.delete",
        "token.generate",
        "token.update",
        "token.revoke",
        "token.revoke_project",
        "keys.rotate",
    } <= actions
    # every change reached the notifier, so proxy workers can drop cached tokens and projects
    notified = management_server.notifier
    assert tid in notified.tokens and new["id"] not in notified.projects
    assert pid in notified.projects  # covers the tokens revoked with the project


def api_key_id(db_env: dict[str, str]) -> str:
    return Keyring.from_text(db_env["ENCRYPTION_KEY"]).current_id


# --- errors ---


def test_bad_input_gets_an_error_envelope_and_writes_nothing(api: Api) -> None:
    pid = make_project(api, "p")
    body = {"name": "q", "api_key": UPSTREAM_KEY}
    cases: list[tuple[str, str, dict[str, object], int, str, str]] = [
        ("POST", "/projects", {"content": b"{not json"}, 400, "invalid_request", "not valid JSON"),
        ("POST", "/projects", {"json": ["q"]}, 400, "invalid_request", "must be a JSON object"),
        ("POST", "/projects", {"json": {"api_key": "k"}}, 400, "invalid_request", "name is req"),
        ("POST", "/projects", {"json": {"name": "q"}}, 400, "invalid_request", "API key is req"),
        (
            "POST",
            "/projects",
            {"json": {**body, "nmae": "typo"}},
            400,
            "invalid_request",
            "unknown field 'nmae'",
        ),
        ("POST", "/projects", {"json": {**body, "name": 5}}, 400, "invalid_request", "a string"),
        ("POST", "/projects", {"json": {**body, "name": "p"}}, 409, "conflict", "already exists"),
        (
            "POST",
            "/projects",
            {"json": {**body, "base_url": "ftp://x"}},
            400,
            "invalid_request",
            "base URL must be",
        ),
        (
            "POST",
            "/tokens",
            {"json": {"project_id": pid, "max_requests": "ten"}},
            400,
            "invalid_request",
            "max_requests must be an integer",
        ),
        (
            "POST",
            "/tokens",
            {"json": {"project_id": pid, "max_requests": 0}},
            400,
            "invalid_request",
            "max requests must be a positive integer",
        ),
        (
            "POST",
            "/tokens",
            {"json": {"project_id": pid, "duration": "soon"}},
            400,
            "invalid_request",
            "invalid duration",
        ),
        ("POST", "/tokens", {"json": {}}, 400, "invalid_request", "project_id is required"),
        (
            "POST",
            "/tokens",
            {"json": {"project_id": new_id()}},
            404,
            "not_found",
            "no project with id",
        ),
        ("POST", "/tokens", {"json": {"project_id": "x"}}, 404, "not_found", "no project"),
        ("PATCH", f"/projects/{pid}", {"json": {}}, 400, "invalid_request", "nothing to update"),
        (
            "PATCH",
            f"/tokens/{new_id()}",
            {"json": {"max_requests": 2, "unlimited": True}},
            400,
            "invalid_request",
            "not both",
        ),
        ("GET", f"/projects/{new_id()}", {}, 404, "not_found", "no project with id"),
        ("GET", "/projects/nope", {}, 404, "not_found", "no project with id"),
        ("POST", "/tokens/nope/revoke", {}, 404, "not_found", "no token with id"),
        ("GET", "/tokens", {"params": {"project_id": "x"}}, 404, "not_found", "no project"),
        ("GET", "/audit", {"params": {"limit": 0}}, 400, "invalid_request", "limit must be"),
        ("GET", "/audit", {"params": {"limit": "x"}}, 400, "invalid_request", "limit must be"),
        ("GET", "/audit", {"params": {"since": "yesterday"}}, 400, "invalid_request", "ISO 8601"),
        ("GET", "/audit", {"params": {"outcome": "meh"}}, 400, "invalid_request", "one of"),
        ("GET", "/audit", {"params": {"actoin": "x"}}, 400, "invalid_request", "unknown query"),
        ("GET", "/nope", {}, 404, "not_found", "Unknown management endpoint"),
        ("PUT", "/projects", {"json": body}, 405, "method_not_allowed", "not allowed"),
        (
            "POST",
            "/projects",
            {"content": b'{"name": "' + b"x" * 70_000 + b'"}'},
            413,
            "request_too_large",
            "over",
        ),
    ]
    for method, path, kw, status, code, message in cases:
        got = api.error(method, path, status, code, **kw)  # type: ignore[arg-type]
        assert message in got, (method, path, got)

    assert [p["name"] for p in api.ok("GET", "/projects")["data"]] == ["p"]
    assert api.ok("GET", "/tokens")["data"] == []
    failures = api.ok("GET", "/audit", params={"outcome": "failure", "limit": 1000})["data"]
    # failures Management saw are audited, as in the CLI; malformed requests never reach it
    assert len(failures) == 9


def test_an_unexpected_failure_is_a_500_envelope_and_one_log_line(
    tmp_path: Path, encryption_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "broken.db"
    env = {"DATABASE_URL": str(db), "ENCRYPTION_KEY": encryption_key, "MANAGEMENT_TOKEN": "t"}
    with ManagementServer(Settings.from_env(env)) as server:
        api = Api(server.url, "t")
        with sqlite3.connect(db) as conn:  # the database breaks under the running server
            conn.execute("DROP TABLE audit_events")
        message = api.error(
            "POST", "/projects", 500, "internal_error", json={"name": "x", "api_key": UPSTREAM_KEY}
        )
        api.close()
    assert message == "Internal error."
    (line,) = [r.getMessage() for r in caplog.records if r.name == "llm_proxy.manage"]
    assert line == "management createProject failed: OperationalError: no such table: audit_events"


# --- pagination ---


def test_audit_pages_and_filters(api: Api) -> None:
    pids = [make_project(api, f"p{i}") for i in range(5)]
    api.error("POST", "/projects", 409, "conflict", json={"name": "p0", "api_key": "k"})
    everything = api.ok("GET", "/audit", params={"limit": 1000})["data"]
    assert [e["action"] for e in everything] == ["project.create"] * 6
    assert everything[0]["outcome"] == "failure"

    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 4}
        if cursor is not None:
            params["before_id"] = cursor
        page = api.ok("GET", "/audit", params=params)
        seen += [e["id"] for e in page["data"]]
        pages += 1
        cursor = page["next_before_id"]
        if cursor is None:
            break
        assert cursor == page["data"][-1]["id"]
    assert pages == 2 and seen == [e["id"] for e in everything]
    # exactly a page's worth left: the last page says so instead of pointing at an empty one
    assert api.ok("GET", "/audit", params={"limit": 6})["next_before_id"] is None

    ok = api.ok("GET", "/audit", params={"outcome": "success"})["data"]
    assert {e["target_id"] for e in ok} == set(pids)
    one = api.ok("GET", "/audit", params={"target_id": pids[2]})["data"]
    assert [e["target_id"] for e in one] == [pids[2]]
    first_ts = everything[-1]["ts"]
    since = api.ok("GET", "/audit", params={"since": first_ts})["data"]
    assert len(since) == 6
    before = api.ok("GET", "/audit", params={"until": first_ts})["data"]
    assert before == []
    future = (utcnow() + timedelta(days=1)).isoformat()
    assert len(api.ok("GET", "/audit", params={"until": future})["data"]) == 6
    assert api.ok("GET", "/audit", params={"since": future})["data"] == []
    assert api.ok("GET", "/audit", params={"action": "token.revoke"})["data"] == []


def test_token_usage_pages_newest_first(api: Api, db_env: dict[str, str]) -> None:
    pid = make_project(api)
    token = api.ok("POST", "/tokens", 201, json={"project_id": pid})
    other = api.ok("POST", "/tokens", 201, json={"project_id": pid})
    base = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    mine = [event(token, base + i, model=f"m{i}", prompt_tokens=1) for i in range(5)]
    record(Settings.from_env(db_env), [*mine, event(other, base + 10)])

    models: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["before_event_id"] = cursor
        page = api.ok("GET", f"/tokens/{token['id']}/usage", params=params)
        assert page["token"]["request_count"] == 5 and page["token"]["prompt_tokens"] == 5
        models += [e["model"] for e in page["events"]]
        cursor = page["next_before_event_id"]
        if cursor is None:
            break
    assert models == ["m4", "m3", "m2", "m1", "m0"]
    first = api.ok("GET", f"/tokens/{token['id']}/usage", params={"limit": 1})["events"][0]
    assert first["ts"] == "2025-01-01T00:00:04Z" and first["token_id"] == token["id"]
    project_page = api.ok("GET", f"/projects/{pid}/usage", params={"limit": 100})
    assert len(project_page["events"]) == 6 and project_page["project"]["request_count"] == 6
    api.error("GET", f"/tokens/{token['id']}/usage", 400, "invalid_request", params={"limit": 1001})


# --- the published schema ---


def test_openapi_document_matches_the_routes(api: Api, db_env: dict[str, str]) -> None:
    document = api.document
    assert document["openapi"].startswith("3.1")
    key = Keyring.from_text(db_env["ENCRYPTION_KEY"])
    app = create_management_app(Settings(), SqliteStore(":memory:"), key)  # never opened
    routed = {
        (method.lower(), "/manage" + route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert len(routed) == len(ENDPOINTS) + 2  # and /openapi.json, /profiling
    published = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert published == routed
    # every published operation answers (auth passed) rather than falling through to 404/405
    for method, path in published:
        reply = api.client.request(method.upper(), sample_path(path.removeprefix("/manage")))
        assert reply.status_code not in (401, 405), (method, path, reply.text)
        if reply.status_code == 404:
            assert reply.json()["error"]["message"] != "Unknown management endpoint."
    names = set(document["components"]["schemas"])
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(document).replace("'", '"')))
    assert refs <= names, refs - names
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_an_outer_request_id_is_used_as_is(tmp_path: Path, encryption_key: str) -> None:
    """When the proxy's own middleware has already chosen the request id, the guard keeps it
    and leaves returning it to that middleware."""
    settings = Settings.from_env({"DATABASE_URL": str(tmp_path / "o.db"), "MANAGEMENT_TOKEN": "t"})
    store = SqliteStore(settings.sqlite_path)
    inner = create_management_app(settings, store, Keyring.from_text(encryption_key))

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        scope["llm_proxy.request_id"] = "outer-7"
        await inner(scope, receive, send)

    async def go() -> tuple[httpx.Response, list[dict[str, object]]]:
        await store.open()
        await store.migrate()
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            reply = await client.post(
                "/projects",
                json={"name": "o", "api_key": UPSTREAM_KEY},
                headers={"Authorization": "Bearer t", "X-Request-ID": "client-1"},
            )
            audit = (await client.get("/audit", headers={"Authorization": "Bearer t"})).json()
        await store.close()
        return reply, audit["data"]

    reply, audit = asyncio.run(go())
    assert reply.status_code == 201 and "x-request-id" not in reply.headers
    assert audit[0]["request_id"] == "outer-7"
