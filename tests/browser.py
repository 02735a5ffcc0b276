"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for console tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.deploy_wiring import require_tool

T = TypeVar("T")

# Without these Chromium reaches for the network at start (updates, sync, field trials, QUIC),
# and this machine's network is closed.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--no-default-browser-check",
)


@contextmanager
def chromium(profile: Path, width: int = 1280, height: int = 900) -> Iterator[WebDriver]:
    """A fresh browser (its own empty profile directory); quit on exit."""
    binary = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP
    # an explicit driver path: Selenium Manager (which downloads drivers) never runs
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``. An element that
    is missing, or went stale because the page was replaced mid-probe, counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def overflows(driver: WebDriver) -> bool:
    """Whether the page is wider than the window (a horizontal scroll bar on a phone)."""
    return bool(
        driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth;")
    )
