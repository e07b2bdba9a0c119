"""Debian's headless Chromium under Selenium, for the browser tests: no browser download, no outside connection.

`make test-browser` (and .ci/run) runs these tests; `make test` never collects tests/browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Chromium would otherwise reach out at start (updates, sync, field trials); this machine refuses outside connections.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def require_chromium() -> None:
    """Fail (not skip) with what to install when Debian's Chromium or its driver is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"The browser tests need Debian's Chromium and ChromeDriver; missing: {', '.join(missing)}. "
                    "Install them (as root): apt-get update && apt-get install -y chromium chromium-driver")


@contextlib.contextmanager
def chromium(width: int = 1600, height: int = 1000) -> Iterator:
    """A headless Chromium (Selenium WebDriver) with a fresh profile and its network log kept."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, should it run at all, must not download a driver
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def outside_requests(driver) -> list[str]:
    """Every URL the page requested from anywhere but this machine (read from Chromium's network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    # chrome:// (the browser's own new-tab page), data: and blob: URLs never leave the machine
    return [u for u in urls if urlparse(u).scheme in ("http", "https", "ws", "wss")
            and urlparse(u).hostname not in LOCAL_HOSTS]


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print what a browser test measured in pytest's own output (not captured), right after its result."""
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        terminal.ensure_newline()
        terminal.write_line(f"    {line}")


def images_dir() -> Path:
    """Where screenshots go: $COURSE_IMAGES_DIR (the Makefile's output/test-images; images/ to update the
    committed one), else output/test-images."""
    from llmtrain import PROJECT_ROOT

    folder = Path(os.environ.get("COURSE_IMAGES_DIR") or PROJECT_ROOT / "output" / "test-images")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
