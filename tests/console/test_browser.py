"""The operator console in a real browser: headless Chromium driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` (scripts/bootstrap installs them); the app
runs on a threaded werkzeug server on 127.0.0.1 with a real worker delivering to a real
receiver. The operator signs in, finds the failing endpoint, opens a FAILED
notification, clicks Retry and sees it delivered, then ignores another one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from deliverer.models import NotificationStatus
from deliverer.notifications.audit import OPERATOR
from tests.console.conftest import OPERATOR_TOKEN
from tests.console.helpers import publish, requests_of, wait_failed
from tests.support import helpers as h
from tests.support.browser import NEEDS_CHROMIUM, chromium, click, flash_text, wait_for_page
from tests.support.receiver import Receiver, ok, status

# What the browser adds (forms, links, redirects, the page's script) is the same on
# every backend; the pages' HTTP side is tested on each backend (test_console.py).
pytestmark = [*NEEDS_CHROMIUM, pytest.mark.backend_independent]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def test_operator_retries_and_ignores_in_chromium(browser: WebDriver, console_server, settings,
                                                  worker, receiver: Receiver, override_settings,
                                                  tmp_path):
    base = console_server.url
    with override_settings(time_scale=1.0):  # a FAILED notification stays FAILED meanwhile
        flaky_url = receiver.program("/flaky", [], status(503))
        gone_url = receiver.program("/gone", [], status(500))
        shop = h.new_partner(settings, flaky_url, name="Browser Shop")
        other = h.new_partner(settings, gone_url, name="Gone Ltd")
        to_retry = publish(settings, shop.partner_id, "TXN-BROWSER-1")
        to_ignore = publish(settings, other.partner_id, "TXN-BROWSER-2")
        wait_failed(to_retry.notification_id)
        wait_failed(to_ignore.notification_id)

        # Sign in: a wrong token first, then the right one.
        browser.get(f"{base}/console/")
        assert "/console/login" in browser.current_url
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        click(browser, "sign-in")
        assert "Wrong admin token." in flash_text(browser)
        browser.find_element(By.ID, "token").send_keys(OPERATOR_TOKEN)
        click(browser, "sign-in")
        assert "Signed in." in flash_text(browser)

        # The failing endpoints, each with its queue and error.
        table = browser.find_element(By.ID, "endpoints").text
        assert flaky_url in table and gone_url in table
        assert "Browser Shop" in table and "1 in queue" in table
        assert "Service unavailable" in table  # the 503's hint
        browser.save_screenshot(str(tmp_path / "endpoints.png"))

        # Open the flaky endpoint's queue, then its FAILED notification.
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "tr.endpoint")
                   if flaky_url in r.text)
        click(browser, element=row.find_element(By.CSS_SELECTOR, "a.queue"))
        results = browser.find_elements(By.CSS_SELECTOR, "tr.result")
        assert len(results) == 1 and "TXN-BROWSER-1" in results[0].text
        click(browser, element=results[0].find_element(By.CSS_SELECTOR, "a.open"))
        assert browser.find_element(By.ID, "status").text == "FAILED"
        attempts = browser.find_element(By.ID, "attempts").text
        assert "HTTP 503" in attempts and "Service unavailable" in attempts

        # The merchant fixed their server: Retry delivers it.
        receiver.program("/flaky", [], ok())
        click(browser, "retry")
        wait_for_page(browser, lambda d: d.find_element(By.ID, "status").text == "SENT",
                      message="status SENT after Retry")
        assert "Retry delivered" in flash_text(browser) or "Retry queued" in flash_text(browser)
        assert "delivered" in browser.find_element(By.ID, "attempts").text
        assert not browser.find_elements(By.ID, "retry")
        browser.save_screenshot(str(tmp_path / "retried.png"))

        # Find the other one by its reference and ignore it.
        browser.get(f"{base}/console/notifications")
        browser.find_element(By.ID, "q").send_keys("TXN-BROWSER-2")
        click(browser, "search")
        click(browser, element=browser.find_element(By.CSS_SELECTOR, "tr.result a.open"))
        assert "Internal server error" in browser.find_element(By.ID, "latest-error").text
        click(browser, "ignore")
        assert "Notification ignored" in flash_text(browser)
        assert browser.find_element(By.ID, "status").text == "NOT_SENT"

        # The event log shows both, and both operator actions.
        browser.get(f"{base}/console/events")
        events = browser.find_element(By.ID, "events").text
        assert "TXN-BROWSER-1" in events and "TXN-BROWSER-2" in events
        assert "SENT" in events and "NOT_SENT" in events
        assert browser.find_element(By.ID, "actions").text.count("operator") == 2

        # Sign out.
        click(browser, "logout")
        assert "/console/login" in browser.current_url

    assert h.notification(to_retry.notification_id).status == NotificationStatus.SENT
    assert h.notification(to_ignore.notification_id).status == NotificationStatus.NOT_SENT
    assert [(r.kind, r.outcome) for r in requests_of(to_retry.notification_id)] == [
        ("retry", OPERATOR)]
    assert [(r.kind, r.outcome) for r in requests_of(to_ignore.notification_id)] == [
        ("ignore", OPERATOR)]
    assert len(receiver.requests("/flaky")) == 2  # the failed attempt, then the retry


def test_operator_lists_a_partners_endpoints_in_chromium(browser: WebDriver, console_server,
                                                         settings):
    from tests.console.test_endpoints_page import two_shops

    ids = two_shops(settings)
    base = console_server.url
    browser.get(f"{base}/console/login")
    if browser.find_elements(By.ID, "token"):
        browser.find_element(By.ID, "token").send_keys(OPERATOR_TOKEN)
        click(browser, "sign-in")
    click(browser, element=browser.find_element(By.LINK_TEXT, "Endpoints"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.partner-endpoint")) == 4
    browser.find_element(By.ID, "partner").send_keys("Two Hooks")
    browser.find_element(By.ID, "failing").click()
    click(browser, "filter")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.partner-endpoint")
    assert {r.get_attribute("data-endpoint-id") for r in rows} == set(ids.values())
    table = browser.find_element(By.ID, "partner-endpoints").text
    assert "FAILING" in table and "DISABLED" in table and "Two Hooks Ltd" in table
    # Its queue opens the endpoint's FAILED notifications.
    billing = next(r for r in rows if r.get_attribute("data-endpoint-id") == ids["billing"])
    click(browser, element=billing.find_element(By.CSS_SELECTOR, "a.queue"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.result")) == 1
