"""The merchant portal in a real browser: headless Chromium driven by Selenium, against
the app on a threaded werkzeug server on 127.0.0.1 with a real worker delivering to a
real receiver (issue 20's "Done when").

The merchant signs in through a portal URL, sees its failing endpoint, troubleshoots a
notification, retries it (first the new error, then, once its server is fixed,
"Delivered"), ignores another one, and is refused another partner's ids, an expired
link and a used one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from sqlalchemy import update

from deliverer.db import session_scope
from deliverer.models import NotificationStatus, PortalSession, utcnow
from deliverer.notifications.audit import ACCEPTED
from deliverer.portal.sessions import SOURCE
from tests.console.helpers import publish, requests_of, wait_failed
from tests.support import helpers as h
from tests.support.browser import NEEDS_CHROMIUM, chromium, click, flash_text, wait_for_page
from tests.support.receiver import Receiver, ok, status

# What the browser adds (forms, links, redirects, the page's script) is the same on
# every backend; the pages' HTTP side is tested on each backend (tests/portal/pages/).
pytestmark = [*NEEDS_CHROMIUM, pytest.mark.backend_independent]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def new_link(admin, partner_id: str) -> str:
    answer = admin.post(f"/internal/v1/partners/{partner_id}/portal-sessions", json={})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["url"])


def sign_in(browser: WebDriver, url: str) -> None:
    browser.delete_all_cookies()
    browser.get(url)
    click(browser, "continue")


def heading(browser: WebDriver) -> str:
    return str(browser.find_element(By.TAG_NAME, "h1").text)


def test_merchant_troubleshoots_retries_and_ignores_in_chromium(
        browser: WebDriver, portal_server, admin, merchant, settings, worker,
        receiver: Receiver, override_settings, tmp_path):
    with override_settings(time_scale=1.0):  # a FAILED notification stays FAILED meanwhile
        flaky = receiver.program("/flaky", [], status(503, b"maintenance"))
        shop = merchant(flaky, name="Browser Shop")
        other = merchant(receiver.program("/other", [], status(500)), name="Other Shop")
        to_retry = publish(settings, shop.partner_id, "TXN-B-1")
        wait_failed(to_retry.notification_id)
        to_ignore = publish(settings, shop.partner_id, "TXN-B-2")
        theirs = publish(settings, other.partner_id, "TXN-THEIRS")
        wait_failed(theirs.notification_id)
        h.wait_until(lambda: h.notification(to_ignore.notification_id).status
                     == NotificationStatus.FAILED, message="second one held")

        # Sign in through a portal URL.
        url = new_link(admin, shop.partner_id)
        sign_in(browser, url)
        assert heading(browser) == "Your webhook endpoints"

        # The failing endpoint, its queue depth and its chart.
        row = browser.find_element(By.CSS_SELECTOR, "tr.endpoint")
        assert row.get_attribute("data-status") == "FAILING"
        assert "Failing" in row.text and "2 in queue" in row.text and flaky in row.text
        assert row.find_elements(By.CSS_SELECTOR, "svg.chart rect")
        browser.save_screenshot(str(tmp_path / "endpoints.png"))

        # Its retry queue, then Troubleshoot the first notification.
        click(browser, element=row.find_element(By.CSS_SELECTOR, "a.queue"))
        queued = browser.find_elements(By.CSS_SELECTOR, "tr.queued")
        assert [("TXN-B-1" in q.text, "TXN-B-2" in q.text) for q in queued] == [
            (True, False), (False, True)]
        click(browser, element=queued[0].find_element(By.CSS_SELECTOR, "a.troubleshoot"))
        browser.save_screenshot(str(tmp_path / "troubleshoot.png"))
        attempts = browser.find_element(By.ID, "attempts").text
        assert "HTTP 503" in attempts and "maintenance" in attempts
        assert "webhook-id" in attempts

        # Retry: still failing, the new error; fixed, "Delivered".
        click(browser, "retry")
        assert "Retry failed: HTTP 503" in flash_text(browser)
        assert browser.find_element(By.ID, "status").text == "FAILED"
        troubleshoot = browser.current_url

        # Diagnose: every step passes but the last, which says what the server answered.
        click(browser, element=browser.find_element(By.CSS_SELECTOR, "p a.mono"))
        click(browser, "diagnose")
        verdict = browser.find_element(By.ID, "verdict").text
        assert verdict.startswith("Signed webhook.test POST fails: HTTP 503"), verdict
        assert len(browser.find_elements(By.CSS_SELECTOR, "tr.step-ok")) == 2  # DNS, TCP
        browser.save_screenshot(str(tmp_path / "diagnose.png"))
        browser.get(troubleshoot)

        receiver.program("/flaky", [], ok())
        click(browser, "retry")
        assert "Delivered" in flash_text(browser)
        assert browser.find_element(By.ID, "status").text == "SENT"
        assert not browser.find_elements(By.ID, "retry")

        # Ignore the other one: asked first, then NOT_SENT.
        browser.get(f"{portal_server.url}/portal/notifications/{to_ignore.notification_id}")
        click(browser, "ignore")
        assert heading(browser) == "Ignore this webhook?"
        click(browser, "confirm-ignore")
        assert "Notification ignored" in flash_text(browser)
        assert browser.find_element(By.ID, "status").text == "NOT_SENT"

        # Another partner's ids: 404, as unknown ones.
        browser.get(f"{portal_server.url}/portal/notifications/{theirs.notification_id}")
        assert heading(browser) == "Not found"
        assert "TXN-THEIRS" not in browser.page_source

        # The link just used, again: refused, and this browser's session is untouched.
        browser.get(url)
        click(browser, "continue")
        assert heading(browser) == "Link not valid"

        # An expired link: refused.
        expired = new_link(admin, shop.partner_id)
        with session_scope() as session:
            session.execute(update(PortalSession).where(PortalSession.exchanged_at.is_(None))
                            .values(token_expires_at=utcnow() - timedelta(seconds=1)))
        sign_in(browser, expired)
        assert heading(browser) == "Link not valid"
        browser.get(f"{portal_server.url}/portal/")
        assert heading(browser) == "Signed out"

    assert h.notification(to_retry.notification_id).status == NotificationStatus.SENT
    assert h.notification(to_ignore.notification_id).status == NotificationStatus.NOT_SENT
    assert h.notification(theirs.notification_id).status == NotificationStatus.FAILED
    assert [(r.kind, r.outcome, r.source) for r in requests_of(to_retry.notification_id)] == [
        ("retry", ACCEPTED, SOURCE)] * 2
    assert [(r.kind, r.source) for r in requests_of(to_ignore.notification_id)] == [
        ("ignore", SOURCE)]


def test_merchant_adds_an_endpoint_for_one_event_type_in_chromium(
        browser: WebDriver, portal_server, admin, merchant, settings, worker,
        receiver: Receiver, tmp_path):
    shop = merchant(receiver.program("/main", [], ok()), name="Billing Shop")
    sign_in(browser, new_link(admin, shop.partner_id))
    click(browser, "add-endpoint")
    billing = receiver.program("/billing", [], ok())
    browser.find_element(By.ID, "url").send_keys(billing)
    browser.find_element(By.ID, "description").send_keys("Billing service")
    assert not browser.find_element(By.ID, "type-all").is_selected()  # nothing ticked
    invoice_box = next(
        box for box in browser.find_elements(By.CSS_SELECTOR, "input[name=event_types]")
        if box.get_attribute("value") == "invoice.settled")
    invoice_box.click()
    browser.save_screenshot(str(tmp_path / "add-endpoint.png"))
    click(browser, "save")
    assert heading(browser) == "Endpoint added"
    assert browser.find_element(By.ID, "secret").text.startswith("whsec_")
    click(browser, "done")
    assert "invoice.settled" in browser.page_source

    publish(settings, shop.partner_id, "TXN-NOT-BILLING", event_type="transaction.paid")
    publish(settings, shop.partner_id, "INV-BILLING", event_type="invoice.settled")
    h.wait_until(lambda: receiver.requests("/billing"), message="the invoice at /billing")
    h.wait_until(lambda: len(receiver.requests("/main")) == 2, message="both at /main")
    assert [b'"reference":"INV-BILLING"' in r.body for r in receiver.requests("/billing")] \
        == [True]

    # The event log shows the invoice delivered to both endpoints.
    browser.get(f"{portal_server.url}/portal/events")
    browser.find_element(By.ID, "f-reference").send_keys("INV-BILLING")
    click(browser, "filter")
    wait_for_page(browser, lambda d: d.find_element(By.CSS_SELECTOR, "tr.event").text
                  .count("SENT") == 2, message="delivered to both endpoints")
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr.event")
    assert billing in row.text and receiver.url("/main") in row.text


def test_the_portal_fits_a_phones_width_in_chromium(
        browser: WebDriver, portal_server, admin, merchant, receiver: Receiver, tmp_path):
    """At 375 px every table-based page scrolled sideways (536-803 px wide), the queue and
    chart columns off-screen, and the settings page's URL input ran past its box (the
    portal try). The page fits; a wide table scrolls within itself."""
    shop = merchant(receiver.program("/" + "a-long-path-segment" * 4, [], ok()),
                    name="Phone Shop")
    sign_in(browser, new_link(admin, shop.partner_id))
    ref = browser.find_element(By.CSS_SELECTOR, "a.settings").get_attribute("href")
    size = browser.get_window_size()
    try:
        browser.set_window_size(375, 800)
        for n, path in enumerate(("/portal/", ref, "/portal/events", "/portal/alerts",
                                  "/portal/endpoints/new")):
            browser.get(path if path.startswith("http") else portal_server.url + path)
            wide = browser.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]")
            browser.save_screenshot(str(tmp_path / f"phone-{n}.png"))
            culprits = browser.execute_script(
                "return [...document.querySelectorAll('body *')].filter("
                "e => e.getBoundingClientRect().right > window.innerWidth + 1)"
                ".slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)")
            assert wide[0] <= wide[1], (path, wide, culprits)
    finally:
        browser.set_window_size(size["width"], size["height"])
