"""Headless Chromium from Debian's packages (chromium, chromium-driver), driven by Selenium, for the browser tests.

`.ci/system-deps` installs both; without them the browser tests fail in CI (CI=true) and are skipped elsewhere.
Selenium is given the driver's path, so it never looks for (or downloads) a driver of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)


def _first(paths) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None) or None


def chromium_or_fail() -> tuple[str, str]:
    browser, driver = _first(CHROMIUM), _first(DRIVER) or shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    # The README's test command installs them first, so a missing browser is a broken setup, never a quiet pass.
    pytest.fail("Debian's chromium and chromium-driver are not installed (bash .ci/system-deps installs them)")


def start(downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_or_fail()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps", "--metrics-recording-only"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def requested_urls(driver) -> list[str]:
    """Every URL the page asked the network for since the last call (Chromium's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
