"""The portal's actions: Retry shows the error, then delivered, and counts against the
merchant's limits; Ignore asks first and is for good; webhooks turned off say so and can
be turned on; a read-only session sees no action buttons."""

from __future__ import annotations

import requests
from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.models import Notification, NotificationStatus, PartnerRequest
from deliverer.notifications.audit import ACCEPTED
from deliverer.portal.sessions import SOURCE
from tests.console.helpers import requests_of
from tests.portal.conftest import ADMIN_TOKEN
from tests.portal.pages.helpers import endpoint_ref
from tests.support import helpers as h
from tests.support.page_client import csrf_of
from tests.support.receiver import Receiver, ok


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


def test_send_again_resends_a_sent_webhook_with_its_id(portal, merchant, worker,
                                                      receiver: Receiver):
    """The Partner API's resend of one notification (the receiver lost one it took)."""
    shop = merchant(receiver.program("/main", [], ok()))
    nid = h.publish_and_wait(shop.partner_id, NotificationStatus.SENT, reference="TXN-S")
    client = portal(shop.partner_id)
    page = f"/portal/notifications/{nid}"
    assert 'id="resend"' in client.get(page).text
    sent = client.submit(page, f"{page}/resend")
    assert sent.status_code == 200 and sent.url.endswith(page)
    assert "Sent again: your endpoint accepted it." in sent.text, sent.text
    first, again = receiver.wait_for(2, "/main")
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == nid
    assert first.body == again.body
    assert h.notification(nid).status == NotificationStatus.SENT
    assert [(r.kind, r.outcome, r.source) for r in requests_of(nid)] == [
        ("resend", ACCEPTED, SOURCE)]
    assert 'id="resend"' not in portal(shop.partner_id, read_only=True).get(page).text


def test_read_only_sessions_see_no_action_buttons(portal, failing):
    shop, first, _second = failing
    client = portal(shop.partner_id, read_only=True)
    for path in ("/portal/", f"/portal/endpoints/{endpoint_ref(first)}",
                 f"/portal/notifications/{first}", f"/portal/notifications/{first}/ignore",
                 "/portal/alerts", f"/portal/endpoints/{endpoint_ref(first)}/settings"):
        text = client.get(path).text
        assert "<button" not in text.replace('<button type="submit" id="logout">', ""), path
    token = csrf_of(client.get("/portal/").text)
    for action in ("retry", "resend", "ignore"):
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
