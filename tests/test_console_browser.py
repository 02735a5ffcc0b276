"""The console in a real browser (headless Chromium) against the real `llm-proxy server`: an
operator's day, from sign-in to a revoked token in the audit log, on a desk and on a phone."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.browser import chromium, overflows, wait_for
from tests.proxy_process import UNLIMITED, ProxyProcess
from tests.upstream_fake import FakeUpstream

MANAGEMENT_TOKEN = "console-browser-mgmt-token-0123456789"
PAGES = ("", "projects", "tokens", "usage", "audit", "slowest")


@pytest.fixture
def fake() -> FakeUpstream:
    upstream = FakeUpstream().start()
    yield upstream  # type: ignore[misc]
    upstream.stop()


def _sign_in(driver: WebDriver, base: str, token: str) -> None:
    driver.get(f"{base}/console/")
    wait_for("the sign-in form", lambda: driver.find_elements(By.ID, "login"))
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()


def _text(driver: WebDriver, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def _chat(base: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


def test_an_operators_day_in_the_console(tmp_path: Path, fake: FakeUpstream) -> None:
    env = {"MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, **UNLIMITED}
    proxy = ProxyProcess(env=env, cwd=tmp_path).start()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        with chromium(tmp_path / "profile") as driver:
            base = proxy.url
            # a wrong token is refused, and the page says so
            _sign_in(driver, base, "not-the-token")
            refusal = wait_for(
                "the refusal", lambda: driver.find_elements(By.CSS_SELECTOR, ".flash.error")
            )
            assert "not the management token" in refusal[0].text
            assert driver.find_elements(By.ID, "login")

            _sign_in(driver, base, MANAGEMENT_TOKEN)
            wait_for("the overview", lambda: driver.find_elements(By.ID, "tiles"))
            assert MANAGEMENT_TOKEN not in driver.page_source
            cookie = driver.get_cookie("llm_proxy_console")
            assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert MANAGEMENT_TOKEN not in cookie["value"]

            # create a project
            driver.get(f"{base}/console/projects")
            form = driver.find_element(By.ID, "create-project")
            form.find_element(By.NAME, "name").send_keys("browser-team")
            form.find_element(By.NAME, "base_url").send_keys(fake.base_url)
            form.find_element(By.NAME, "api_key").send_keys("sk-upstream-browser-secret-key")
            form.find_element(By.TAG_NAME, "button").click()
            row = wait_for(
                "the new project's row",
                lambda: driver.find_elements(By.CSS_SELECTOR, "#projects tr[data-project-id]"),
            )[0]
            assert "browser-team" in row.text
            assert "sk-upstream-browser-secret-key" not in driver.page_source  # write-only

            # generate a token: shown once, with snippets that carry it
            driver.get(f"{base}/console/tokens")
            form = driver.find_element(By.ID, "generate-token")
            Select(form.find_element(By.NAME, "project_id")).select_by_visible_text("browser-team")
            form.find_element(By.NAME, "label").send_keys("ci")
            form.find_element(By.TAG_NAME, "button").click()
            token = wait_for("the new token", lambda: _text(driver, "new-token")).strip()
            assert token in _text(driver, "snippet-curl")
            assert token in _text(driver, "snippet-python")
            assert token not in driver.current_url
            driver.get(f"{base}/console/tokens")
            assert token not in driver.page_source  # once means once
            token_row = driver.find_element(By.CSS_SELECTOR, "#tokens tr[data-token-id]")
            token_id = token_row.get_attribute("data-token-id")

            # the token works, and the request shows on the overview and in usage
            driver.get(f"{base}/console/")
            assert _text(driver, "tile-window") == "0"
            answer = _chat(base, token)
            assert answer.status_code == 200, answer.text
            # no reload: the page's own polling brings the request in
            wait_for(
                "the request on the overview",
                lambda: _text(driver, "tile-window") not in ("", "0"),
                timeout=60,
            )

            def usage_counts() -> bool:
                driver.get(f"{base}/console/usage")
                row = driver.find_elements(
                    By.CSS_SELECTOR, f'#usage-tokens tr[data-token-id="{token_id}"]'
                )
                return bool(row) and row[0].find_elements(By.CSS_SELECTOR, "td.n")[0].text == "1"

            wait_for("the request in usage", usage_counts, timeout=60)
            project_id = driver.find_element(
                By.CSS_SELECTOR, "#usage-projects tr[data-project-id]"
            ).get_attribute("data-project-id")
            driver.get(f"{base}/console/usage?project_id={project_id}")
            by_model = driver.find_element(By.CSS_SELECTOR, "#usage-models tbody tr").text
            assert by_model.startswith("gpt-4o-mini 1 18 0"), by_model
            assert len(driver.find_elements(By.CSS_SELECTOR, "#usage-days tbody tr")) == 1

            # revoke it: the next request is refused
            driver.get(f"{base}/console/tokens")
            driver.find_element(
                By.CSS_SELECTOR, f'tr[data-token-id="{token_id}"] form[action$="/revoke"] button'
            ).click()
            wait_for(
                "the revoked state",
                lambda: (
                    "revoked"
                    in driver.find_element(By.CSS_SELECTOR, f'tr[data-token-id="{token_id}"]').text
                ),
            )
            wait_for("the refusal", lambda: _chat(base, token).status_code == 401)

            # both actions, and the failed sign-in, are in the audit log
            driver.get(f"{base}/console/audit")
            rows = driver.find_elements(By.CSS_SELECTOR, "#audit tr[data-action]")
            seen = {(r.get_attribute("data-action"), r.get_attribute("data-outcome")) for r in rows}
            assert ("token.generate", "success") in seen
            assert ("token.revoke", "success") in seen
            assert ("project.create", "success") in seen
            assert ("console.login", "failure") in seen
            driver.get(f"{base}/console/audit?action=token.revoke")
            filtered = driver.find_elements(By.CSS_SELECTOR, "#audit tr[data-action]")
            assert [r.get_attribute("data-target-id") for r in filtered] == [token_id]
            assert token not in driver.page_source

            # a form whose CSRF token was removed is refused and changes nothing
            driver.get(f"{base}/console/projects")
            driver.execute_script(
                "var f = document.getElementById('create-project');"
                "f.querySelector('[name=csrf]').remove();"
                "f.querySelector('[name=name]').value = 'forged';"
                "f.querySelector('[name=api_key]').value = 'sk-forged';"
                "f.submit();"
            )
            assert "CSRF" in wait_for("the refusal", lambda: _text(driver, "denied"))
            status = driver.execute_script(
                "return fetch('/console/projects', {method: 'POST', headers: "
                "{'content-type': 'application/x-www-form-urlencoded'}, "
                "body: 'name=forged&api_key=sk-forged'}).then(r => r.status);"
            )
            assert status == 403
            driver.get(f"{base}/console/projects")
            assert "forged" not in driver.find_element(By.ID, "projects").text

            # every page at a desk's width and a phone's, without sideways scrolling
            driver.get_log("browser")  # the refusals above were logged as failed loads
            for width, height in ((1280, 900), (390, 844)):
                driver.set_window_size(width, height)
                for page in PAGES:
                    driver.get(f"{base}/console/{page}")
                    wait_for(f"/{page} to load", lambda: driver.find_elements(By.TAG_NAME, "main"))
                    driver.save_screenshot(str(shots / f"{page or 'overview'}-{width}.png"))
                    assert not overflows(driver), f"/console/{page} overflows at {width}px"
            assert len(list(shots.glob("*.png"))) == 2 * len(PAGES)

            # the slowest-requests page says why it is empty
            driver.get(f"{base}/console/slowest")
            assert "PROFILING_ENABLED" in _text(driver, "profiling-off")

            # no script error and no Content-Security-Policy violation on any of those pages
            problems = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert problems == []

            # signing out ends the session
            driver.find_element(By.CSS_SELECTOR, ".logout button").click()
            wait_for("the sign-in form", lambda: driver.find_elements(By.ID, "login"))
            driver.get(f"{base}/console/tokens")
            assert driver.find_elements(By.ID, "login")
    finally:
        proxy.stop()
