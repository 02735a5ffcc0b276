"""The console's security model over HTTP against the real server: sessions, CSRF, throttled and
audited sign-ins, and where the console is served."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import redis

from shared.config import Settings
from shared.errors import ConfigError
from shared.streams import shard_keys
from tests.console_client import hidden_csrf, login_page, sign_in, signed_in
from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.services import RedisProcess, free_port

TOKEN = "console-http-mgmt-token-0123456789"
MANAGE = {"Authorization": f"Bearer {TOKEN}"}


def _cookie_header(answer: httpx.Response, name: str) -> str:
    for value in answer.headers.get_list("set-cookie"):
        if value.startswith(name + "="):
            return value.lower()
    raise AssertionError(f"no {name} cookie set")


def _audit(base: str, action: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{base}/manage/audit", params={"action": action}, headers=MANAGE)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, object]] = answer.json()["data"]
    return rows


def test_sign_in_sessions_and_csrf(tmp_path: Path) -> None:
    env = {
        "MANAGEMENT_TOKEN": TOKEN,
        "TRUSTED_PROXIES": "127.0.0.1",
        "CONSOLE_SESSION_TTL": "2h",
        **UNLIMITED,
    }
    # one worker: the sign-in throttle is counted per worker
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    base = proxy.url
    try:
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{base}/console/").headers["location"] == "/console/login"
            # the sign-in form is a form like any other: no nonce, no sign-in
            login_page(client, base)  # holds the nonce cookie, but the form field is left out
            bare = client.post(f"{base}/console/login", data={"token": TOKEN})
            assert bare.status_code == 403
            assert "llm_proxy_console=" not in bare.headers.get("set-cookie", "")

            # wrong tokens: refused, audited, and after five the address must wait
            for _ in range(5):
                wrong = sign_in(client, base, "guess")
                assert wrong.status_code == 401
                assert TOKEN not in wrong.text and "guess" not in wrong.text
            waiting = sign_in(client, base, TOKEN)
            assert waiting.status_code == 429 and int(waiting.headers["retry-after"]) > 0
            failures = _audit(base, "console.login")
            assert [r["outcome"] for r in failures] == ["failure"] * 5
            assert {r["client_ip"] for r in failures} == {"127.0.0.1"}

        # another address (through the trusted proxy, over https) signs in
        https = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        with httpx.Client(timeout=30) as client:
            # the nonce cookie is Secure now, so this http client would not send it back: the
            # test carries it by hand, as the browser behind TLS would
            page = client.get(f"{base}/console/login", headers=https)
            assert "secure" in _cookie_header(page, "llm_proxy_console_login")
            answer = httpx.post(
                f"{base}/console/login",
                data={"csrf": hidden_csrf(page.text), "token": TOKEN},
                headers={
                    **https,
                    "Cookie": f"llm_proxy_console_login={page.cookies['llm_proxy_console_login']}",
                },
            )
            assert answer.status_code == 303
            cookie = _cookie_header(answer, "llm_proxy_console")
            for flag in ("httponly", "samesite=strict", "secure", "max-age=7200", "path=/console"):
                assert flag in cookie, flag
            assert TOKEN.lower() not in cookie
            assert _audit(base, "console.login")[0]["outcome"] == "success"
            assert _audit(base, "console.login")[0]["client_ip"] == "203.0.113.7"

        with httpx.Client(timeout=30) as plain:  # over http the cookie is not marked Secure
            answer = sign_in(plain, base, TOKEN, **{"X-Forwarded-For": "203.0.113.8"})
            assert "secure" not in _cookie_header(answer, "llm_proxy_console")

            page = plain.get(f"{base}/console/projects")
            assert page.status_code == 200 and TOKEN not in page.text
            csrf = hidden_csrf(page.text)
            form = {"name": "made-here", "api_key": "sk-up-1", "base_url": "http://127.0.0.1:9/v1"}
            for forged in ({}, {"csrf": "x" * len(csrf)}):
                refused = plain.post(f"{base}/console/projects", data={**form, **forged})
                assert refused.status_code == 403
            made = plain.post(f"{base}/console/projects", data={**form, "csrf": csrf})
            assert made.status_code == 200 and "made-here" in made.text
            names = [
                p["name"]
                for p in httpx.get(f"{base}/manage/projects", headers=MANAGE).json()["data"]
            ]
            assert names == ["made-here"]  # the forged posts changed nothing

            # a new token: in this one answer, which no cache may keep, and never again
            project_id = httpx.get(f"{base}/manage/projects", headers=MANAGE).json()["data"][0][
                "id"
            ]
            shown = plain.post(
                f"{base}/console/tokens", data={"project_id": project_id, "csrf": csrf}
            )
            assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
            secret = shown.text.split('<code id="new-token">', 1)[1].split("<", 1)[0]
            assert (
                secret.startswith("sk-") and secret not in plain.get(f"{base}/console/tokens").text
            )

            # a tampered cookie is no session
            session = plain.cookies["llm_proxy_console"]
            tampered = httpx.get(
                f"{base}/console/projects",
                cookies={
                    "llm_proxy_console": session[:-2] + ("AA" if session[-2:] != "AA" else "BB")
                },
            )
            assert tampered.status_code == 303

            # signing out is audited and ends the session in this browser
            out = plain.post(f"{base}/console/logout", data={"csrf": csrf})
            assert out.status_code == 303
            assert plain.get(f"{base}/console/projects").status_code == 303
            assert _audit(base, "console.logout")[0]["outcome"] == "success"
    finally:
        proxy.stop()


def test_the_console_is_served_where_the_management_api_is(tmp_path: Path) -> None:
    manage_addr = f"127.0.0.1:{free_port()}"
    env = {"MANAGEMENT_TOKEN": TOKEN, "MANAGEMENT_LISTEN": manage_addr, **UNLIMITED}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    split = ProxyProcess(env=env, cwd=tmp_path / "a", workers=1).start()
    off = ProxyProcess(
        env={"MANAGEMENT_TOKEN": TOKEN, "CONSOLE_ENABLED": "false", **UNLIMITED},
        cwd=tmp_path / "b",
        workers=1,
    ).start()
    try:
        assert httpx.get(f"{split.url}/console/login").status_code == 404
        assert httpx.get(f"{split.url}/console/static/htmx.min.js").status_code == 404
        on_manage = httpx.get(f"http://{manage_addr}/console/login")
        assert on_manage.status_code == 200 and 'name="token"' in on_manage.text
        asset = httpx.get(f"http://{manage_addr}/console/static/htmx.min.js")
        assert asset.status_code == 200 and "htmx" in asset.text
        client = signed_in(f"http://{manage_addr}", TOKEN)
        assert client.get(f"http://{manage_addr}/console/").status_code == 200
        client.close()

        assert httpx.get(f"{off.url}/console/login").status_code == 404
        assert httpx.get(f"{off.url}/manage/projects", headers=MANAGE).status_code == 200
    finally:
        split.stop()
        off.stop()


def test_the_console_needs_the_management_token() -> None:
    assert Settings.from_env({}).console_on is False
    assert Settings.from_env({"MANAGEMENT_TOKEN": "t"}).console_on is True
    assert Settings.from_env({"MANAGEMENT_TOKEN": "t", "CONSOLE_ENABLED": "0"}).console_on is False
    with pytest.raises(ConfigError, match="CONSOLE_ENABLED=true needs MANAGEMENT_TOKEN"):
        Settings.from_env({"CONSOLE_ENABLED": "true"})


def test_the_stream_lag_tile_counts_every_shard(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    """Entries no dispatcher has read yet on shard 0 and shard 1 add up in the tile."""
    keys = shard_keys("llm-proxy-events", 2)
    admin = redis.Redis(host="127.0.0.1", port=private_redis.port)
    for key, n in zip(keys, (3, 4), strict=True):
        admin.xgroup_create(key, "llm-proxy-dispatchers", id="0", mkstream=True)
        for _ in range(n):
            admin.xadd(key, {"e": b"{}"})
    env = {
        "MANAGEMENT_TOKEN": TOKEN,
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_ADDR": private_redis.addr,
        "REDIS_STREAM_SHARDS": "2",
        "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
        **UNLIMITED,
    }
    proxy = ProxyProcess(env=env, cwd=tmp_path, workers=1).start()
    try:
        client = signed_in(proxy.url, TOKEN)
        tiles = client.get(f"{proxy.url}/console/overview/tiles")
        client.close()
        assert tiles.status_code == 200
        assert re.search(r'id="tile-lag">\s*7\s*<', tiles.text), tiles.text
    finally:
        proxy.stop()
