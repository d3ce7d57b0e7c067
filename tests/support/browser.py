"""Headless Chromium driven by Selenium, for the tests of the server-rendered pages (the
operator console, the merchant portal).

Debian's ``chromium`` and ``chromium-driver`` (scripts/bootstrap installs them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# What a browser test module marks itself with.
NEEDS_CHROMIUM = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Chromium is not installed (/usr/bin/chromium): "
                              "apt-get install chromium chromium-driver, or scripts/bootstrap"),
]


@contextmanager
def chromium() -> Iterator[WebDriver]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    # Selenium must not phone home or fetch a driver: both are on this machine.
    os.environ.setdefault("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="deliverer-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--disable-default-apps", "--window-size=1400,1000",
                 # Chromium still looks names up for its own services (autofill,
                 # component updates): no name resolves but loopback, so nothing leaves it.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, "
                 "EXCLUDE localhost",
                 "--disable-features=AutofillServerCommunication,OptimizationHints,"
                 "MediaRouter",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def click(driver: WebDriver, element_id: str | None = None, element=None) -> None:
    """Click a link or submit button and wait until the next page has loaded."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    target = element if element is not None else driver.find_element(By.ID, element_id)
    page = driver.find_element(By.TAG_NAME, "html")
    target.click()

    def left(_driver: WebDriver) -> bool:
        try:
            return bool(expected_conditions.staleness_of(page)(_driver))
        except WebDriverException as exc:
            # Mid-navigation, Chromium may answer for a node of the old document with an
            # inspector error instead of "stale element": the old page is gone all the same.
            if "does not belong to the document" in str(exc):
                return True
            raise

    WebDriverWait(driver, 30).until(left)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def flash_text(driver: WebDriver) -> str:
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".flash"))


def wait_for_page(driver: WebDriver, predicate, timeout: float = 20.0, reload: bool = True,
                  message: str = "page condition") -> None:
    """Check ``predicate(driver)``, reloading the page between checks, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate(driver):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}; "
                                 f"page: {driver.page_source[:2000]}")
        time.sleep(0.2)
        if reload:
            driver.refresh()
