"""POST /api/partner/v2/webhook-notifications/{id}/resend: one notification's event again,
to its endpoint's current URL, whatever its status, with its webhook-id; counted and
refused as the resend by reference is (a gap review: a SENT notification whose receiver
lost it, or an earlier event of a reference, could not be had again)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from deliverer.models import NotificationStatus, Trigger
from tests.api import helpers as t
from tests.api.endpoints.helpers import ENDPOINTS, create
from tests.support import helpers as h
from tests.support.rows import partner_requests

NOTIFICATION = "/api/partner/v2/webhook-notifications/{}"
RESEND = NOTIFICATION + "/resend"
BY_REFERENCE = "/api/partner/v2/transactions/{}/resend-webhook"

pytestmark = pytest.mark.usefixtures("worker")



def test_an_earlier_event_of_a_reference_is_sent_again_as_it_was(make_partner, receiver,
                                                                  long_wait):
    partner = make_partner(receiver.url("/hook"))
    first = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT,
                               reference="TXN-E", event_type="transaction.created",
                               payload={"n": 1})
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-E",
                       event_type="transaction.paid", payload={"n": 2})
    before = t.snapshot(first)

    response = partner.api.post(RESEND.format(first))

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success", "message": "Webhook sent successfully",
                               "reference": "TXN-E", "notificationId": first,
                               "webhookUrl": receiver.url("/hook")}
    got = receiver.wait_for(3, "/hook")
    assert got[2].body == got[0].body and json.loads(got[2].body)["data"] == {"n": 1}
    assert got[2].headers["webhook-id"] == got[0].headers["webhook-id"] == first
    h.verify_signature(partner.signing_secret, got[2])
    assert t.snapshot(first) == {**before, "attempt_count": 2}  # no status change
    assert h.triggers(first) == [Trigger.AUTOMATIC, Trigger.RESEND]
    [row] = t.accepted(partner.partner_id, kind="resend")
    assert (row.reference, row.notification_id, row.delivery_status) == ("TXN-E", first, "SENT")


def test_it_goes_to_the_endpoint_the_notification_went_to(make_partner, receiver,
                                                          long_wait):
    """Fan-out: the billing endpoint's notification goes to billing, signed with its own
    secret, not to the webhook URL."""
    partner = make_partner(receiver.url("/default"))
    [default] = partner.api.get(ENDPOINTS).json()["data"]
    changed = partner.api.patch(f"{ENDPOINTS}/{default['id']}",
                                json={"eventTypes": ["transaction.*"]})
    assert changed.status_code == 200, changed.text
    billing = create(partner, receiver.url("/billing"), eventTypes=["invoice.*"])
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT,
                             reference="INV-1", event_type="invoice.settled")
    assert partner.api.get(NOTIFICATION.format(nid)).json()["endpointId"] == billing["id"]
    response = partner.api.post(RESEND.format(nid))
    assert response.status_code == 200, response.text
    assert response.json()["webhookUrl"] == receiver.url("/billing")
    resent = receiver.wait_for(2, "/billing")[1]
    h.verify_signature(billing["signingSecret"], resent)
    assert [r.headers["webhook-id"] for r in receiver.requests("/default")].count(nid) == 0


@pytest.mark.parametrize("make_id", [
    lambda other: other,  # another partner's
    lambda other: "00000000-0000-4000-8000-000000000000",
    lambda other: "not-a-uuid",
    lambda other: "x" * 300,
], ids=["another partner's", "unknown", "malformed", "long"])
def test_another_partners_or_an_unknown_id_is_404(make_partner, make_id):
    partner = make_partner("http://127.0.0.1:9/hook")
    other = make_partner("http://127.0.0.1:9/other", name="Other")
    theirs = h.insert_notification(other.partner_id, "http://127.0.0.1:9/other",
                                   status=NotificationStatus.SENT)
    before = t.row_counts()
    response = partner.api.post(RESEND.format(make_id(theirs)))
    t.assert_error(response, 404, "NOT_FOUND", "Webhook notification not found")
    after = t.row_counts()  # the refusal is on the audit trail, nothing else is written
    assert after == before | {"partner_requests": before["partner_requests"] + 1}


def test_a_disabled_endpoints_notification_is_409(make_partner):
    partner = make_partner("http://127.0.0.1:9/hook")
    off = create(partner, "http://127.0.0.1:9/off", enabled=False)
    nid = h.insert_notification(partner.partner_id, "http://127.0.0.1:9/off",
                                status=NotificationStatus.SENT)
    response = partner.api.post(RESEND.format(nid))
    t.assert_error(response, 409, "CONFLICT")
    assert off["id"] in response.json()["message"]
    assert t.accepted(partner.partner_id, kind="resend") == []
    # On the notification's own audit history, as a refused ignore is (the console lists
    # a notification's requests by its id: a review).
    [refused] = partner_requests(partner.partner_id, kind="resend")
    assert (refused.outcome, refused.notification_id) == ("CONFLICT", nid)


def test_the_limit_is_shared_with_resends_by_reference_under_parallel_requests(
        make_partner, receiver, api_settings):
    url = receiver.url("/hook")
    partner = make_partner(url)
    ids = [h.insert_notification(partner.partner_id, url, status=NotificationStatus.SENT,
                                 reference=f"TXN-P{i}") for i in range(10)]
    start = threading.Barrier(20)

    def call(i: int) -> int:
        start.wait(10)
        path = RESEND.format(ids[i % 10]) if i % 2 else BY_REFERENCE.format(f"TXN-P{i % 10}")
        return partner.api.post(path).status_code

    with api_settings(resend_wait_seconds=0.05), ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(call, range(20)))
    assert sorted(codes).count(429) == 10, codes
    assert all(code in (200, 202, 429) for code in codes), codes
    assert len(t.accepted(partner.partner_id, kind="resend")) == 10
    receiver.wait_for(10, "/hook")
