"""The portal's pages and actions over HTTP, against the app on a live server with a real
worker delivering to a real receiver: what each page shows, Retry and Ignore with the
merchant's own limits and audit trail, the event log's filters, alerts, and other
partners' ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import select, update

import deliverer
from deliverer.db import session_scope
from deliverer.models import (
    Alert,
    Endpoint,
    Notification,
    NotificationStatus,
    PartnerRequest,
    utcnow,
)
from deliverer.notifications.audit import ACCEPTED
from deliverer.portal import queries
from deliverer.portal.chart import HEIGHT, WIDTH
from deliverer.portal.sessions import SOURCE
from tests.console.helpers import publish, requests_of, wait_failed
from tests.portal.conftest import ADMIN_TOKEN, Merchant
from tests.support import helpers as h
from tests.support.page_client import csrf_of
from tests.support.receiver import Receiver, ok, status


@pytest.fixture
def failing(merchant, worker, receiver: Receiver, override_settings, settings
            ) -> Iterator[tuple[Merchant, str, str]]:
    """A merchant whose endpoint answers 503, with two FAILED notifications. The ladder
    runs in real time: the next automatic try is 2 minutes away, so they stay put."""
    with override_settings(time_scale=1.0):
        shop = merchant(receiver.program("/hooks", [], status(503, b"down for maintenance")))
        first = publish(settings, shop.partner_id, "TXN-1")
        wait_failed(first.notification_id)
        second = publish(settings, shop.partner_id, "TXN-2", event_type="invoice.settled")
        h.wait_until(lambda: h.notification(second.notification_id).status
                     == NotificationStatus.FAILED, message="second FAILED (held)")
        yield shop, first.notification_id, second.notification_id


def endpoint_id(nid: str) -> int:
    endpoint = h.notification(nid).endpoint_id
    assert endpoint is not None
    return endpoint


def endpoint_ref(nid: str) -> str:
    """The public id the portal's addresses name the notification's endpoint by."""
    with session_scope() as session:
        endpoint = session.get(Endpoint, endpoint_id(nid))
        assert endpoint is not None
        return endpoint.public_id


def test_endpoints_page_shows_the_failing_endpoint(portal, failing):
    shop, _first, _second = failing
    page = portal(shop.partner_id).get("/portal/")
    assert page.status_code == 200
    assert "Failing" in page.text and "since" in page.text and " ago)" in page.text
    assert "2 in queue" in page.text and "UTC" in page.text
    # Links a screen reader lists out of context say whose they are (the portal try).
    assert 'aria-label="Settings of http://127.0.0.1:' in page.text
    assert "Service unavailable" in page.text or "HTTP 503" in page.text
    # The chart: inline SVG, no script anywhere, under the console's policy.
    assert "<svg" in page.text and "<script" not in page.text
    assert f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"' in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "2 attempts" in page.text or "attempts" in page.text


def test_a_callback_urls_retry_queue_is_shown_beside_the_endpoints(
        portal, merchant, worker, receiver: Receiver, override_settings):
    """Webhooks retried at an event's callbackUrl were in the event log only: no queue,
    no next retry (the portal try)."""
    with override_settings(time_scale=1.0):  # the next try 2 minutes away: it stays put
        shop = merchant(receiver.program("/hooks", [], ok()))
        callback = receiver.program("/callback", [], status(500))
        published = deliverer.publish_event(shop.partner_id, "transaction.paid", "TXN-CB",
                                            {"amount": 1}, callback)
        wait_failed(published.notification_id)
        page = portal(shop.partner_id).get("/portal/").text
    assert 'id="other-queues"' in page and callback in page
    assert "1 in queue" in page and "Other URLs with webhooks still to be sent" in page
    # Not an endpoint of the table above (no settings, no actions).
    assert page.count('class="endpoint"') == 1


def test_no_other_queue_section_without_one(portal, failing):
    shop, _first, _second = failing
    assert 'id="other-queues"' not in portal(shop.partner_id).get("/portal/").text


def test_an_endpoints_retry_queue_lists_failures_earliest_first(portal, failing):
    shop, first, _second = failing
    client = portal(shop.partner_id)
    page = client.get(f"/portal/endpoints/{endpoint_ref(first)}")
    assert page.status_code == 200
    assert page.text.index("TXN-1") < page.text.index("TXN-2")
    assert "waits behind the first" in page.text
    assert 'id="diagnose"' in page.text
    assert 'aria-label="Troubleshoot transaction.paid TXN-1"' in page.text


def test_the_retry_queue_is_paged_earliest_first(portal, failing, monkeypatch):
    shop, first, _second = failing
    monkeypatch.setattr(queries, "QUEUE_LIMIT", 1)  # the server runs in this process
    client = portal(shop.partner_id)
    page = client.get(f"/portal/endpoints/{endpoint_ref(first)}")
    assert "TXN-1" in page.text and "TXN-2" not in page.text
    assert "Webhooks 1 to 1 of 2." in page.text and 'id="queue-first"' not in page.text
    second = client.get(page.text.split('id="queue-next"')[0].rsplit('href="', 1)[1]
                        .split('"')[0].replace("&amp;", "&"))
    assert "TXN-2" in second.text and "TXN-1" not in second.text
    assert "Webhooks 2 to 2 of 2." in second.text and 'id="queue-next"' not in second.text
    assert 'id="queue-first"' in second.text
    past = client.get(f"/portal/endpoints/{endpoint_ref(first)}", params={"after": 10**6})
    assert "No failed webhook after those already shown." in past.text
    assert 'id="empty-queue"' not in past.text
    for garbage in ("x", "-1", str(10**30)):
        shown = client.get(f"/portal/endpoints/{endpoint_ref(first)}",
                           params={"after": garbage})
        assert shown.status_code == 200 and "TXN-1" in shown.text


def test_troubleshoot_shows_every_attempt(portal, failing):
    shop, first, _second = failing
    page = portal(shop.partner_id).get(f"/portal/notifications/{first}")
    assert page.status_code == 200
    text = page.text
    assert "HTTP 503" in text and "down for maintenance" in text  # status and body
    assert " ms</td>" in text  # duration
    assert "webhook-id" in text and first in text and "User-Agent" in text  # headers sent
    assert 'id="retry"' in text and 'id="ignore"' in text
    assert shop.partner.api_key not in text and shop.partner.signing_secret not in text


def test_retry_shows_the_error_then_delivered_and_counts_against_the_limits(
        portal, portal_server, failing, receiver: Receiver):
    shop, first, _second = failing
    client = portal(shop.partner_id)
    page = f"/portal/notifications/{first}"
    failed = client.submit(page, f"{page}/retry")
    assert failed.status_code == 200 and failed.url.endswith(page)
    assert "Retry failed: HTTP 503" in failed.text
    receiver.program("/hooks", [], ok())
    delivered = client.submit(page, f"{page}/retry")
    assert "Delivered" in delivered.text
    assert h.notification(first).status == NotificationStatus.SENT
    audit = requests_of(first)
    assert [(r.kind, r.outcome, r.source, r.api_key_id) for r in audit] == [
        ("retry", ACCEPTED, SOURCE, None)] * 2
    # Seed 000's limit: three manual retries per notification, the portal's included.
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == first).values(
            status=NotificationStatus.FAILED, manual_retry_count=3))
    # No Retry button to be refused by (the portal try): said instead.
    shown = client.get(page).text
    assert 'id="retry"' not in shown and 'id="no-retries-left"' in shown
    assert "All 3 manual retries of this webhook are used" in shown
    refused = client.submit(page, f"{page}/retry")  # a page loaded before: still refused
    assert "Retry refused: Partner webhook notification has reached the maximum number " \
           "of manual retries (3)" in refused.text
    assert requests_of(first)[-1].outcome == "CONFLICT"
    assert requests_of(first)[-1].source == SOURCE
    # The operator console tells the merchant's portal actions from operators'.
    console = requests.get(f"{portal_server.url}/console/notifications/{first}",
                           auth=("operator", ADMIN_TOKEN), timeout=30)
    assert console.text.count("merchant (portal)") == 3


def test_ignore_asks_for_confirmation_then_takes_it_out_for_good(portal, failing):
    shop, _first, second = failing
    client = portal(shop.partner_id)
    confirm = client.get(f"/portal/notifications/{second}/ignore")
    assert confirm.status_code == 200 and "Ignore this webhook?" in confirm.text
    # Held behind the first: nothing waits behind it to be retried in its place.
    assert "retried in its place" not in confirm.text
    # Without the confirmation field, nothing happens: back to the question.
    asked = client.post(f"/portal/notifications/{second}/ignore",
                        {"csrf_token": csrf_of(confirm.text)})
    assert "Ignore this webhook?" in asked.text
    assert h.notification(second).status == NotificationStatus.FAILED
    done = client.post(f"/portal/notifications/{second}/ignore",
                       {"csrf_token": csrf_of(confirm.text), "confirm": "yes"})
    assert "Notification ignored" in done.text
    assert h.notification(second).status == NotificationStatus.NOT_SENT
    assert [(r.kind, r.outcome, r.source) for r in requests_of(second)] == [
        ("ignore", ACCEPTED, SOURCE)]
    # Ignored already: the page offers nothing more to ignore (the portal try).
    again = client.get(f"/portal/notifications/{second}/ignore").text
    assert 'id="nothing-to-ignore"' in again and 'id="confirm-ignore"' not in again


def test_another_partners_ids_answer_404(portal, failing, merchant, settings):
    _shop, first, _second = failing
    other = merchant(None, name="Nosy Ltd")
    nosy = portal(other.partner_id)
    token = csrf_of(nosy.get("/portal/").text)
    event_id = h.notification(first).event_id
    for path in (f"/portal/notifications/{first}", f"/portal/notifications/{first}/ignore",
                 f"/portal/endpoints/{endpoint_ref(first)}", f"/portal/events/{event_id}",
                 "/portal/notifications/not-an-id", "/portal/endpoints/ep_000000000000000000000000",
                 f"/portal/endpoints/{endpoint_id(first)}"):
        assert nosy.get(path).status_code == 404, path
    ref = endpoint_ref(first)
    for path in (f"/portal/endpoints/{ref}/settings", f"/portal/endpoints/{ref}/delete"):
        assert nosy.get(path).status_code == 404, path
    for path in (f"/portal/notifications/{first}/retry",
                 f"/portal/notifications/{first}/ignore",
                 f"/portal/endpoints/{ref}/diagnose", f"/portal/endpoints/{ref}/settings",
                 f"/portal/endpoints/{ref}/enabled", f"/portal/endpoints/{ref}/delete",
                 f"/portal/endpoints/{ref}/rotate-secret", f"/portal/endpoints/{ref}/test"):
        answer = nosy.post(path, {"csrf_token": token, "confirm": "yes"})
        assert answer.status_code == 404, path
    assert h.notification(first).status == NotificationStatus.FAILED
    assert h.notification(first).manual_retry_count == 0
    assert "TXN-1" not in nosy.get("/portal/events").text
    with session_scope() as session:
        endpoint = session.get(Endpoint, endpoint_id(first))
        assert endpoint is not None and endpoint.disabled_at is None
        assert endpoint.registered and endpoint.deleted_at is None


def test_event_log_filters_and_pages(portal, merchant, worker, receiver: Receiver, settings):
    shop = merchant(receiver.program("/ok", [], ok()))
    published = [publish(settings, shop.partner_id, f"REF-{i:02}",
                         event_type="invoice.settled" if i % 3 == 0 else "transaction.paid")
                 for i in range(30)]
    h.wait_until(lambda: all(h.sent(p.notification_id) for p in published),
                 message="all delivered")
    client = portal(shop.partner_id)
    first = client.get("/portal/events")
    assert first.text.count('class="event"') == 25
    assert "REF-29" in first.text and "REF-04" not in first.text
    assert 'id="next-page"' in first.text
    older = client.get("/portal/events", params={"cursor": first.text.split(
        "cursor=")[1].split('"')[0].split("&")[0]})
    assert older.text.count('class="event"') == 5 and "REF-00" in older.text
    by_type = client.get("/portal/events", params={"type": "invoice.settled"})
    assert by_type.text.count('class="event"') == 10
    by_reference = client.get("/portal/events", params={"reference": "REF-07"})
    assert by_reference.text.count('class="event"') == 1
    assert client.get("/portal/events", params={"status": "FAILED"}).text.count(
        'class="event"') == 0
    assert client.get("/portal/events", params={"status": "SENT"}).text.count(
        'class="event"') == 25
    today = utcnow().strftime("%Y-%m-%d")
    assert client.get("/portal/events", params={"from": today, "to": today}).text.count(
        'class="event"') == 25
    assert 'id="no-events"' in client.get("/portal/events",
                                          params={"to": "2020-01-01"}).text
    # A bad filter is not applied, and the page says which (never a 500); the good ones
    # still are.
    bad = client.get("/portal/events", params={"from": "yesterday", "to": "2026-02-30",
                                               "status": "sent", "cursor": "garbage",
                                               "type": "invoice.settled"})
    assert bad.status_code == 400
    assert ("Not applied: “sent” is not a delivery status; “yesterday” is not a date "
            "(YYYY-MM-DD); “2026-02-30” is not a date (YYYY-MM-DD); the page link is not "
            "one of this log's.") in bad.text.replace("&#39;", "'")
    assert bad.text.count('class="event"') == 10
    # From after To: said, as Recover says it, not an empty log (the portal try).
    reversed_days = client.get("/portal/events", params={"from": "2026-12-08",
                                                         "to": "2026-12-07"})
    assert reversed_days.status_code == 400
    assert "Not applied: “From” is later than “To”" in reversed_days.text
    assert reversed_days.text.count('class="event"') == 25  # the first page, unfiltered
    assert 'id="filter-problems"' not in by_type.text
    event_id = h.notification(published[7].notification_id).event_id
    payload = client.get(f"/portal/events/{event_id}")
    assert payload.status_code == 200 and "&#34;amount&#34;: 1000" in payload.text


def test_alerts_and_the_alert_email_subscription(portal, failing):
    shop, first, _second = failing
    with session_scope() as session:
        session.add(Alert(partner_id=shop.partner_id, endpoint_id=endpoint_id(first),
                          notification_id=first, kind="endpoint_failing",
                          message="Webhook endpoint has failed 6 deliveries in a row",
                          created_at=utcnow()))
    client = portal(shop.partner_id)
    page = client.get("/portal/alerts")
    assert "failed 6 deliveries in a row" in page.text and "Alerts are not e-mailed" in page.text
    assert "<td>Webhook endpoint failing</td>" in page.text  # not its code, endpoint_failing
    subscribed = client.submit("/portal/alerts", "/portal/alerts/email",
                               {"email": "ops@shop.example"})
    # No SMTP here: the page says none is sent, and the flash no longer promises one
    # (the portal try).
    assert ("Saved: alerts will be e-mailed to ops@shop.example once this deployment "
            "sends e-mail" in subscribed.text)
    assert shop.api.get("/api/partner/v2/webhook-settings").json()["alertEmail"] == \
        "ops@shop.example"
    refused = client.submit("/portal/alerts", "/portal/alerts/email", {"email": "nope"})
    assert "not an e-mail address" in refused.text
    gone = client.submit("/portal/alerts", "/portal/alerts/email", {"unsubscribe": "1"})
    assert "no longer e-mailed" in gone.text
    assert shop.api.get("/api/partner/v2/webhook-settings").json()["alertEmail"] is None


def test_a_flash_is_shown_once_on_a_4xx_page_too(portal, failing):
    # A 4xx rolls the request's transaction back; the flash its page showed stays gone.
    shop, _first, _second = failing
    client = portal(shop.partner_id)
    page = client.get("/portal/alerts")
    client.post("/portal/alerts/email", {"csrf_token": csrf_of(page.text), "email": "nope"},
                allow_redirects=False)
    missing = client.get("/portal/endpoints/ep_nonexistent")
    assert missing.status_code == 404 and "not an e-mail address" in missing.text
    bad_filter = client.get("/portal/events", params={"status": "sent"})
    assert bad_filter.status_code == 400
    assert "not an e-mail address" not in bad_filter.text
    assert "not an e-mail address" not in client.get("/portal/alerts").text


def test_pages_label_their_controls(portal, failing):
    shop, first, _second = failing
    client = portal(shop.partner_id)
    for path in ("/portal/events", "/portal/alerts", "/portal/endpoints/new",
                 f"/portal/endpoints/{endpoint_ref(first)}/settings"):
        text = client.get(path).text
        for control in ("input", "select"):
            for tag in text.split(f"<{control} ")[1:]:
                if 'type="hidden"' in tag:
                    continue
                control_id = tag.split('id="')[1].split('"')[0]
                assert f'for="{control_id}"' in text, (path, control_id)


def test_disabled_endpoints_say_so(portal, failing):
    shop, first, _second = failing
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoint_id(first)).values(
            disabled_at=utcnow(), disabled_reason="410 Gone"))
    client = portal(shop.partner_id)
    page = client.get("/portal/")
    assert "Disabled" in page.text and "410 Gone" in page.text
    # What it holds waits for it to be enabled, not behind a first one.
    queue = client.get(f"/portal/endpoints/{endpoint_ref(first)}")
    assert "held while the endpoint is disabled: enable it to send" in queue.text
    assert "waits behind the first" not in queue.text


def test_read_only_sessions_see_no_action_buttons(portal, failing):
    shop, first, _second = failing
    client = portal(shop.partner_id, read_only=True)
    for path in ("/portal/", f"/portal/endpoints/{endpoint_ref(first)}",
                 f"/portal/notifications/{first}", f"/portal/notifications/{first}/ignore",
                 "/portal/alerts", f"/portal/endpoints/{endpoint_ref(first)}/settings"):
        text = client.get(path).text
        assert "<button" not in text.replace('<button type="submit" id="logout">', ""), path
    token = csrf_of(client.get("/portal/").text)
    for action in ("retry", "ignore"):
        refused = client.post(f"/portal/notifications/{first}/{action}",
                              {"csrf_token": token, "confirm": "yes"})
        assert refused.status_code == 403
    assert h.notification(first).status == NotificationStatus.FAILED
    assert requests_of(first) == []


def test_webhooks_turned_off_say_so_and_can_be_turned_on(portal, merchant, settings,
                                                         receiver: Receiver):
    shop = merchant(receiver.program("/main", [], ok()))
    off = shop.api.put("/api/partner/v2/webhook-settings", json={"enabled": False})
    assert off.status_code == 200, off.text
    looking = portal(shop.partner_id, read_only=True).get("/portal/").text
    assert 'id="webhooks-off"' in looking and 'id="webhooks-on"' not in looking
    client = portal(shop.partner_id)
    assert 'id="webhooks-on"' in client.get("/portal/").text
    turned = client.submit("/portal/", "/portal/webhooks/on")
    assert turned.status_code == 200 and "Webhooks are on" in turned.text
    assert 'id="webhooks-off"' not in turned.text
    assert shop.api.get("/api/partner/v2/webhook-settings").json()["enabled"] is True
    with session_scope() as session:
        audited = session.execute(select(PartnerRequest.outcome, PartnerRequest.source).where(
            PartnerRequest.partner_id == shop.partner_id,
            PartnerRequest.kind == "webhooks_on")).all()
    assert [tuple(row) for row in audited] == [(ACCEPTED, SOURCE)]


def test_errors_under_the_portal_are_pages_not_json(portal, failing):
    """Routing's 404 and 405 and the app's guards answer before the portal's own
    handlers: a reloaded POST address, an unknown path or a NUL gave the API's JSON."""
    shop, first, _second = failing
    client = portal(shop.partner_id)
    ref = endpoint_ref(first)
    for path, expected in ((f"/portal/endpoints/{ref}/diagnose", 405),
                           (f"/portal/endpoints/{ref}/rotate-secret", 405),
                           ("/portal/endpoints/", 404), ("/portal/no-such-page", 404),
                           ("/portal/events?reference=a%00b", 400)):
        answer = client.get(path)
        assert answer.status_code == expected, path
        assert answer.headers["Content-Type"].startswith("text/html"), path
        assert "<h1>" in answer.text and '"statusCode"' not in answer.text, path
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"], path
    # The API's errors stay JSON.
    assert shop.api.get("/api/partner/v2/no-such").json()["code"] == "NOT_FOUND"
