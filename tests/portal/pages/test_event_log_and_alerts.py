"""The portal's event log (its filters and pages) and its alerts (with the alert-email
subscription)."""

from __future__ import annotations

from deliverer.db import session_scope
from deliverer.models import Alert, utcnow
from tests.console.helpers import publish
from tests.portal.pages.helpers import endpoint_id
from tests.support import helpers as h
from tests.support.receiver import Receiver, ok


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
