"""The management API as mounted in the real server, driven by the CLI's remote mode."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.upstream_fake import FakeUpstream

MANAGEMENT_TOKEN = "mgmt-token-for-tests-0123456789"


def remote(url: str, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "admin", "manage", "--api-url", url, *args, "--json"],
        env={"PATH": "/usr/bin:/bin", "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_remote_cli_manages_a_running_server(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    proxy = ProxyProcess(env={"MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, **UNLIMITED}, cwd=tmp_path)
    proxy.start()
    try:
        project = remote(
            proxy.url,
            "project",
            "create",
            "--name",
            "r",
            "--base-url",
            fake.base_url,
            "--api-key",
            "sk-upstream-remote",
        )
        token = remote(proxy.url, "token", "generate", "--project-id", str(project["id"]))
        headers = {"Authorization": f"Bearer {token['token']}"}
        assert httpx.get(f"{proxy.url}/v1/models", headers=headers).status_code == 200
        remote(proxy.url, "token", "revoke", str(token["id"]))
        deadline = time.monotonic() + 5
        while httpx.get(f"{proxy.url}/v1/models", headers=headers).status_code != 401:
            assert time.monotonic() < deadline, "revocation did not reach the workers"
            time.sleep(0.05)
        schema = httpx.get(
            f"{proxy.url}/manage/openapi.json",
            headers={"Authorization": f"Bearer {MANAGEMENT_TOKEN}"},
        )
        assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.1")
        # proxy tokens never open the management API
        assert httpx.get(f"{proxy.url}/manage/projects", headers=headers).status_code == 401
    finally:
        proxy.stop()
        fake.stop()


def test_management_api_is_disabled_without_a_token(tmp_path: Path) -> None:
    proxy = ProxyProcess(env={}, cwd=tmp_path, workers=1).start()
    try:
        resp = httpx.get(f"{proxy.url}/manage/projects")
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "management_disabled"
    finally:
        proxy.stop()


def test_audit_rows_name_the_client_behind_a_trusted_proxy(tmp_path: Path) -> None:
    env = {"MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, "TRUSTED_PROXIES": "127.0.0.1", **UNLIMITED}
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    auth = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
    try:
        created = httpx.post(
            f"{proxy.url}/manage/projects",
            headers={**auth, "X-Forwarded-For": "198.51.100.4, 203.0.113.9"},
            json={"name": "via-nginx", "api_key": "sk-upstream-x"},
        )
        assert created.status_code == 201, created.text
        audit = httpx.get(f"{proxy.url}/manage/audit", headers=auth).json()["data"]
    finally:
        proxy.stop()
    [row] = [a for a in audit if a["action"] == "project.create"]
    assert row["client_ip"] == "203.0.113.9"  # the nearest untrusted hop, not nginx's address
    assert row["actor"] == "api:203.0.113.9"
