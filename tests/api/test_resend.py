"""POST /api/partner/v2/transactions/{reference}/resend-webhook (seeds 002, 004)."""

from __future__ import annotations

import json

import pytest

import deliverer
from deliverer.models import NotificationStatus, Trigger
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.receiver import sleep, status
from tests.support.rows import partner_requests

RESEND = "/api/partner/v2/transactions/{}/resend-webhook"

pytestmark = pytest.mark.usefixtures("worker")



def test_resend_delivered_within_the_wait_is_200_success(make_partner, receiver, long_wait):
    url = receiver.url("/hook")
    partner = make_partner(url)
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-1")
    before = t.snapshot(nid)

    response = partner.api.post(RESEND.format("TXN-1"))

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success", "message": "Webhook sent successfully",
                               "reference": "TXN-1", "notificationId": nid,
                               "webhookUrl": url}
    got = receiver.wait_for(2, "/hook")
    assert got[1].body == got[0].body  # the same event, again
    h.verify_signature(partner.signing_secret, got[1])
    # The original's delivery is untouched; the resend is one more of its attempts.
    assert t.snapshot(nid) == {**before, "attempt_count": 2}
    attempts = h.attempts(nid)
    assert [(a.trigger, a.success) for a in attempts] == [
        (Trigger.AUTOMATIC, True), (Trigger.RESEND, True)]
    [row] = t.accepted(partner.partner_id, kind="resend")
    assert (row.reference, row.notification_id, row.delivery_status) == ("TXN-1", nid, "SENT")


def test_resend_can_be_repeated_without_side_effects(make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-R")
    before = t.snapshot(nid)
    for _ in range(3):
        response = partner.api.post(RESEND.format("TXN-R"))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "success"
    assert len(receiver.wait_for(4, "/hook")) == 4
    assert t.snapshot(nid) == {**before, "attempt_count": 4}
    detail = partner.api.get(f"/api/partner/v2/webhook-notifications/{nid}").json()
    assert detail["attemptCount"] == len(detail["attempts"]) == 4  # = the receiver's
    assert h.triggers(nid) == [Trigger.AUTOMATIC] + [Trigger.RESEND] * 3
    assert t.row_counts()["notifications"] == 1
    assert t.row_counts()["events"] == 1


def test_slow_receiver_gives_202_pending_then_delivers(make_partner, receiver, api_settings):
    receiver.program("/hook", [status(200)], then=sleep(1.5, status(200)))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-S")
    with api_settings(resend_wait_seconds=0.3):
        response = partner.api.post(RESEND.format("TXN-S"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["notificationId"] == nid
    assert body["message"]
    # ... and it does arrive.
    receiver.wait_for(2, "/hook")
    h.wait_until(lambda: partner_requests(partner.partner_id, kind="resend",
                                            delivery_status="SENT"), message="resend SENT")
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]
    assert h.notification(nid).status == NotificationStatus.SENT


def test_resend_of_a_failed_notification_leaves_it_failed(make_partner, receiver, long_wait,
                                                          slow_ladder):
    receiver.program("/hook", [status(500)], then=status(200))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED, reference="TXN-F")
    before = t.snapshot(nid)
    response = partner.api.post(RESEND.format("TXN-F"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success"
    after = t.snapshot(nid)
    # Still FAILED, the same cycle's counters, error and ladder; one attempt more.
    assert after == {**before, "attempt_count": before["attempt_count"] + 1}
    assert after["status"] == NotificationStatus.FAILED
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]


def test_resend_that_fails_is_reported_in_the_error_format(make_partner, receiver, long_wait):
    receiver.program("/hook", [status(200)], then=status(503))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-E")
    response = partner.api.post(RESEND.format("TXN-E"))
    body = t.assert_error(response, 502, "WEBHOOK_DELIVERY_FAILED")
    assert "503" in body["message"]
    assert h.notification(nid).status == NotificationStatus.SENT
    [attempt] = [a for a in h.attempts(nid) if a.trigger == Trigger.RESEND]
    assert attempt.success is False
    assert attempt.error_payload["httpStatus"] == 503
    assert attempt.error_payload["hint"]


def test_resend_sends_the_latest_event_of_the_reference(make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/hook"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-L",
                       event_type="transaction.created", payload={"n": 1})
    latest = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-L",
                                event_type="transaction.paid", payload={"n": 2})
    response = partner.api.post(RESEND.format("TXN-L"))
    assert response.status_code == 200, response.text
    assert response.json()["notificationId"] == latest
    resent = json.loads(receiver.wait_for(3, "/hook")[2].body)
    assert resent["type"] == "transaction.paid"
    assert resent["data"] == {"n": 2}


def test_resend_goes_to_the_events_callback_url(make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/default"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-CB",
                       callback_url=receiver.url("/callback"))
    response = partner.api.post(RESEND.format("TXN-CB"))
    assert response.status_code == 200, response.text
    assert response.json()["webhookUrl"] == receiver.url("/callback")
    assert len(receiver.wait_for(2, "/callback")) == 2
    assert receiver.requests("/default") == []


def test_resend_goes_to_the_current_webhook_url(make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/old"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-U")
    new_url = receiver.url("/new")
    assert partner.api.put("/api/partner/v2/webhook-settings",
                           json={"url": new_url}).status_code == 200
    response = partner.api.post(RESEND.format("TXN-U"))
    assert response.status_code == 200, response.text
    assert response.json()["webhookUrl"] == new_url
    receiver.wait_for(1, "/new")
    assert len(receiver.requests("/old")) == 1


@pytest.mark.parametrize("reference", ["TXN-NOPE", "txn-1", "TXN-1 ", "%20", "x" * 300,
                                       "TXN-1234567890ABCDEF", "çà-ü"])
def test_unknown_reference_is_404(make_partner, reference):
    partner = make_partner("http://127.0.0.1:9/hook")
    h.insert_notification(partner.partner_id, "http://127.0.0.1:9/hook",
                          status=NotificationStatus.FAILED, reference="TXN-1")
    before = t.row_counts()["attempts"]
    response = partner.api.post(RESEND.format(reference))
    t.assert_error(response, 404, "NOT_FOUND", "Transaction not found")
    assert t.row_counts()["attempts"] == before
    assert t.accepted(partner.partner_id, kind="resend") == []


def test_resend_without_any_webhook_url_is_409(make_partner):
    partner = make_partner(None)
    deliverer.publish_event(partner.partner_id, "transaction.paid", "TXN-N", {"a": 1})
    t.assert_error(partner.api.post(RESEND.format("TXN-N")), 409, "CONFLICT")


def test_resend_rate_limit_is_per_partner_and_separate_from_retries(make_partner, receiver,
                                                                    api_settings):
    url = receiver.url("/hook")
    partner = make_partner(url)
    other = make_partner(url, name="Other")
    h.insert_notification(partner.partner_id, url, status=NotificationStatus.SENT,
                          reference="TXN-RL")
    h.insert_notification(other.partner_id, url, status=NotificationStatus.SENT,
                          reference="TXN-RL")
    with api_settings(resend_wait_seconds=0.05):
        for _ in range(10):
            assert partner.api.post(RESEND.format("TXN-RL")).status_code in (200, 202)
        response = partner.api.post(RESEND.format("TXN-RL"))
        t.assert_error(response, 429, "TOO_MANY_REQUESTS", t.RATE_LIMITED)
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        # Another partner is not affected; nor are this partner's manual retries.
        assert other.api.post(RESEND.format("TXN-RL")).status_code in (200, 202)
        failed = h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED)
        response = partner.api.post(f"/api/partner/v2/webhook-notifications/{failed}/retry")
        assert response.status_code == 200, response.text
    assert len(t.accepted(partner.partner_id, kind="resend")) == 10
    receiver.wait_for(12, "/hook")  # 10 + 1 resends, 1 manual retry


# ---------------------------------------------------------------------- several endpoints

ENDPOINTS = "/api/partner/v2/endpoints"


@pytest.fixture
def billing(make_partner, receiver):
    """A partner whose default endpoint takes transaction events only, and a billing
    endpoint (its own secret) invoice events: an invoice reaches billing alone."""
    partner = make_partner(receiver.url("/default"))
    [default] = partner.api.get(ENDPOINTS).json()["data"]
    changed = partner.api.patch(f"{ENDPOINTS}/{default['id']}",
                                json={"eventTypes": ["transaction.*"]})
    assert changed.status_code == 200, changed.text
    created = partner.api.post(ENDPOINTS, json={"url": receiver.url("/billing"),
                                                "eventTypes": ["invoice.*"]})
    assert created.status_code == 201, created.text
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="INV-1",
                             event_type="invoice.settled")
    receiver.wait_for(1, "/billing")
    return partner, created.json(), nid


def test_resend_goes_to_the_endpoint_that_received_the_event(billing, receiver, long_wait):
    # It went to the webhook URL, whose endpoint takes no invoice events, signed with the
    # partner's secret (a black-box try on the embedded default).
    partner, endpoint, nid = billing
    response = partner.api.post(RESEND.format("INV-1"))
    assert response.status_code == 200, response.text
    assert response.json()["webhookUrl"] == receiver.url("/billing")
    assert response.json()["notificationId"] == nid
    got = receiver.wait_for(2, "/billing")
    h.verify_signature(endpoint["signingSecret"], got[1])
    assert receiver.requests("/default") == []
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]


def test_resend_is_refused_as_a_retry_is_while_nothing_would_be_sent(billing, receiver):
    partner, endpoint, nid = billing
    disabled = partner.api.patch(f"{ENDPOINTS}/{endpoint['id']}", json={"enabled": False})
    assert disabled.status_code == 200, disabled.text
    refused = t.assert_error(partner.api.post(RESEND.format("INV-1")), 409, "CONFLICT")
    assert refused["message"].startswith(f"Webhook endpoint {endpoint['id']} is disabled")
    assert refused["message"].endswith("then resend")
    partner.api.patch(f"{ENDPOINTS}/{endpoint['id']}", json={"enabled": True})
    off = partner.api.put("/api/partner/v2/webhook-settings", json={"enabled": False})
    assert off.status_code == 200, off.text
    t.assert_error(partner.api.post(RESEND.format("INV-1")), 409, "CONFLICT",
                   "Webhooks are turned off: turn them on in your webhook settings, "
                   "then resend")
    partner.api.put("/api/partner/v2/webhook-settings", json={"enabled": True})
    assert partner.api.delete(f"{ENDPOINTS}/{endpoint['id']}").status_code == 200
    t.assert_error(partner.api.post(RESEND.format("INV-1")), 409, "CONFLICT",
                   f"Webhook endpoint {endpoint['id']}, which received this event, was "
                   "deleted: there is nothing to resend it to")
    assert len(receiver.requests("/billing")) == 1 and receiver.requests("/default") == []
    assert h.triggers(nid) == [Trigger.AUTOMATIC]
    outcomes = [r.outcome for r in partner_requests(partner.partner_id) if r.kind == "resend"]
    assert outcomes == ["CONFLICT"] * 3


def test_an_event_no_endpoint_took_is_not_resent_to_the_webhook_url(billing, receiver):
    # NOT_SENT for want of a subscriber, its resend went to the webhook URL, whose
    # endpoint takes transaction events only (the merchant try).
    partner, _endpoint, _nid = billing
    [default] = [e for e in partner.api.get(ENDPOINTS).json()["data"] if e["isDefault"]]
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.NOT_SENT,
                             reference="PAY-1", event_type="payment.status.updated")
    t.assert_error(partner.api.post(RESEND.format("PAY-1")), 409, "CONFLICT",
                   f"Webhook endpoint {default['id']} (your webhook URL) is not subscribed "
                   "to event type payment.status.updated: subscribe it, then resend")
    seed_002 = partner.bearer.post("/api/v1/merchant/transactions/PAY-1/resend-webhook")
    assert seed_002.status_code == 409, seed_002.text
    assert receiver.requests("/default") == [] and h.attempts(nid) == []
    # Subscribed, it goes.
    partner.api.patch(f"{ENDPOINTS}/{default['id']}", json={"eventTypes": ["*"]})
    sent = partner.api.post(RESEND.format("PAY-1"))
    assert sent.status_code == 200, sent.text
    assert sent.json()["webhookUrl"] == receiver.url("/default")


def test_a_resend_is_checked_again_when_it_is_sent(billing, receiver, settings):
    """The sweep sends a lost resend again, maybe hours later: an endpoint disabled
    since is sent nothing, as it would be refused if asked for then."""
    from sqlalchemy import select, update

    from deliverer.db import session_scope
    from deliverer.models import Endpoint, PartnerRequest, utcnow
    from deliverer.notifications.resend import request_resend
    from deliverer.partners.service import Principal

    partner, endpoint, _nid = billing
    with session_scope() as session:  # asked for, then disabled before the worker runs
        asked = request_resend(session, settings, Principal(partner.partner_id, None), "INV-1")
        session.execute(update(Endpoint).where(Endpoint.public_id == endpoint["id"])
                        .values(disabled_at=utcnow(), disabled_reason="410 Gone"))

    def status() -> str:
        with session_scope() as session:
            return str(session.scalar(select(PartnerRequest.delivery_status)
                                      .where(PartnerRequest.id == asked.request_id)))

    h.wait_until(lambda: status() == "FAILED", message="the resend ended, unsent")
    assert len(receiver.requests("/billing")) == 1 and receiver.requests("/default") == []
