"""MANAGEMENT_LISTEN: the management API on a listener of its own, served by the same real
gunicorn workers, and absent from the public one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.errors import ConfigError
from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.services import free_port
from tests.upstream_fake import FakeUpstream

MANAGEMENT_TOKEN = "mgmt-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}


def remote(url: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "admin", "manage", "--api-url", url, *args, "--json"],
        env={"PATH": "/usr/bin:/bin", "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_management_answers_on_its_own_listener_only(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    manage_url = f"http://127.0.0.1:{free_port()}"
    env = {
        "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
        "MANAGEMENT_LISTEN": manage_url.removeprefix("http://"),
        **UNLIMITED,
    }
    proxy = ProxyProcess(env=env, cwd=tmp_path).start()
    try:
        project = remote(
            manage_url, "project", "create", "--name", "m", "--base-url", fake.base_url,
            "--api-key", "sk-upstream-manage-listener",
        )  # fmt: skip
        token = remote(manage_url, "token", "generate", "--project-id", str(project["id"]))
        client_auth = {"Authorization": f"Bearer {token['token']}"}

        # the public listener: the API, probes and metrics; no management, token or not
        assert httpx.get(f"{proxy.url}/v1/models", headers=client_auth).status_code == 200
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(proxy.url + path).status_code == 200, path
        for path in ("/manage/openapi.json", "/manage/projects", "/manage/"):
            public = httpx.get(proxy.url + path, headers=AUTH)
            assert public.status_code == 404, path
            assert public.json()["error"]["code"] == "not_found"
        created = httpx.post(f"{proxy.url}/manage/projects", headers=AUTH, json={"name": "x"})
        assert created.status_code == 404

        # the management listener: the management API, and nothing the public one serves
        schema = httpx.get(f"{manage_url}/manage/openapi.json", headers=AUTH)
        assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.1")
        for path in ("/v1/models", "/health", "/ready", "/metrics"):
            assert httpx.get(manage_url + path, headers=client_auth).status_code == 404, path
        # every worker knows the split, not just the one that answered first
        for _ in range(20):
            assert httpx.get(f"{manage_url}/v1/models", headers=client_auth).status_code == 404
            assert httpx.get(f"{proxy.url}/manage/projects", headers=AUTH).status_code == 404
        # only the one /v1/ request on the public listener reached the upstream
        assert [seen.path for seen in fake.requests] == ["/v1/models"]
    finally:
        proxy.stop()
        fake.stop()


def test_without_the_setting_management_shares_the_public_port(tmp_path: Path) -> None:
    proxy = ProxyProcess(env={"MANAGEMENT_TOKEN": MANAGEMENT_TOKEN}, cwd=tmp_path, workers=1)
    proxy.start()
    try:
        assert httpx.get(f"{proxy.url}/manage/openapi.json", headers=AUTH).status_code == 200
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1:8080", "MANAGEMENT_LISTEN must use a port other than PORT"),
        ("127.0.0.1", "MANAGEMENT_LISTEN must be host:port"),
        ("127.0.0.1:0", "MANAGEMENT_LISTEN must be host:port"),
        ("localhost:http", "MANAGEMENT_LISTEN must be host:port"),
    ],
)
def test_a_bad_management_listener_is_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"MANAGEMENT_LISTEN": value, "PORT": "8080"})


def test_the_management_listener_setting() -> None:
    assert Settings.from_env({}).management_port is None
    settings = Settings.from_env({"MANAGEMENT_LISTEN": ":9001"})
    assert (settings.management_listen, settings.management_port) == ("0.0.0.0:9001", 9001)
    with pytest.raises(ConfigError, match="other than PORT"):
        settings.replace(port=9001)
