"""Reconciliation: GET /webhook-notifications?endpointId=...&sequenceAfter=N lists what
one endpoint was sent after the last sequence number it saw, in sequence order; the
numbers are gap-free per endpoint, so a merchant fetches exactly what it missed."""

from __future__ import annotations

import base64

import pytest

import deliverer
from deliverer.models import NotificationStatus
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.receiver import ok, status

LIST = "/api/partner/v2/webhook-notifications"
ENDPOINTS = "/api/partner/v2/endpoints"


def create(partner, url: str, **fields) -> dict:
    response = partner.api.post(ENDPOINTS, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def listing(partner, **params) -> dict:
    response = partner.api.get(LIST, params=params)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.usefixtures("worker")
def test_a_merchant_fetches_exactly_what_one_endpoint_missed(make_partner, receiver):
    partner = make_partner(receiver.url("/default"))
    # The orders service takes two webhooks, then goes down.
    orders = create(partner, receiver.program("/orders", [ok(), ok()], then=status(503)),
                    eventTypes=["transaction.*"])
    published = []
    for i in range(2):
        published.append(deliverer.publish_event(partner.partner_id, "transaction.paid",
                                                 f"TXN-{i}", {"n": i}))
    receiver.wait_for(2, "/orders")
    h.wait_until(lambda: all(h.sent(p.deliveries[1].notification_id) for p in published))
    for i in range(2, 8):
        event_type = "transaction.failed" if i % 2 else "invoice.settled"
        published.append(deliverer.publish_event(partner.partner_id, event_type,
                                                 f"TXN-{i}", {"n": i}))

    # The merchant looks up the webhooks its orders service processed (they may have
    # arrived in any order) for the highest sequence number...
    processed = [partner.api.get(f"{LIST}/{r.headers['webhook-id']}").json()
                 for r in receiver.requests("/orders")[:2]]
    assert {n["endpointId"] for n in processed} == {orders["id"]}
    seen = max(processed, key=lambda n: n["sequence"])
    assert seen["sequence"] == 2
    # ... and fetches what that endpoint was sent after it: the transaction events only,
    # none of the default endpoint's, in sequence order, over two pages.
    first = listing(partner, endpointId=orders["id"], sequenceAfter=seen["sequence"], limit=2)
    second = listing(partner, endpointId=orders["id"], sequenceAfter=seen["sequence"],
                     limit=2, cursor=first["nextCursor"])
    assert first["nextCursor"] and second["nextCursor"] is None
    missed = first["data"] + second["data"]
    expected = [p.deliveries[1].notification_id for p in published[2:]
                if len(p.deliveries) == 2]
    assert [n["id"] for n in missed] == expected
    assert [n["sequence"] for n in missed] == [3, 4, 5]
    assert {n["endpointId"] for n in missed} == {orders["id"]}
    assert {n["eventType"] for n in missed} == {"transaction.failed"}
    assert all(n["status"] != NotificationStatus.SENT for n in missed)
    # Every sequence number of the endpoint is accounted for: none skipped.
    everything = listing(partner, endpointId=orders["id"], sequenceAfter=0, limit=100)
    assert [n["sequence"] for n in everything["data"]] == [1, 2, 3, 4, 5]
    # endpointId alone: that endpoint's notifications, newest first.
    default_id = next(e["id"] for e in partner.api.get(ENDPOINTS).json()["data"]
                      if e["isDefault"])
    on_default = listing(partner, endpointId=default_id, limit=100)["data"]
    assert [n["sequence"] for n in on_default] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert listing(partner, endpointId=orders["id"], sequenceAfter=5)["data"] == []


def test_reconciliation_filters_refuse_what_they_cannot_answer(make_partner):
    partner = make_partner("http://127.0.0.1:9/default")
    mine = create(partner, "http://127.0.0.1:9/mine")
    other = make_partner("http://127.0.0.1:9/other", name="Other")
    theirs = create(other, "http://127.0.0.1:9/theirs")
    h.insert_notification(partner.partner_id, "http://127.0.0.1:9/mine",
                          status=NotificationStatus.FAILED)
    # Sequence numbers are counted per endpoint: sequenceAfter alone means nothing.
    t.assert_error(partner.api.get(LIST, params={"sequenceAfter": 0}), 400, "BAD_REQUEST")
    # An unknown or another partner's endpoint is not found, never "nothing missed".
    for endpoint_id in (theirs["id"], "ep_" + "0" * 24, "x" * 41):
        t.assert_error(partner.api.get(LIST, params={"endpointId": endpoint_id}),
                       404 if len(endpoint_id) <= 40 else 400)
    for bad in ("-1", "x", "1.5", str(2**63)):
        t.assert_error(partner.api.get(LIST, params={"endpointId": mine["id"],
                                                     "sequenceAfter": bad}), 400)
    # A cursor of one order is not a cursor of the other.
    h.insert_notification(partner.partner_id, "http://127.0.0.1:9/mine",
                          status=NotificationStatus.FAILED)
    by_time = listing(partner, limit=1)["nextCursor"]
    by_sequence = listing(partner, endpointId=mine["id"], sequenceAfter=0,
                          limit=1)["nextCursor"]
    assert by_time and by_sequence
    t.assert_error(partner.api.get(LIST, params={"endpointId": mine["id"],
                                                 "sequenceAfter": 0, "cursor": by_time}),
                   400, "BAD_REQUEST", "Invalid cursor")
    t.assert_error(partner.api.get(LIST, params={"cursor": by_sequence}), 400,
                   "BAD_REQUEST", "Invalid cursor")
    for number in (2**63, -1):  # made up: beyond what a BIGINT holds, or negative
        forged = base64.urlsafe_b64encode(f"seq:{number}".encode()).decode()
        t.assert_error(partner.api.get(LIST, params={"endpointId": mine["id"],
                                                     "sequenceAfter": 0, "cursor": forged}),
                       400, "BAD_REQUEST", "Invalid cursor")


def test_the_other_filters_narrow_a_reconciliation(make_partner):
    partner = make_partner()
    mine = create(partner, "http://127.0.0.1:9/mine")
    states = [NotificationStatus.SENT, NotificationStatus.FAILED, NotificationStatus.SENT,
              NotificationStatus.FAILED]
    ids = [h.insert_notification(partner.partner_id, "http://127.0.0.1:9/mine", status=state)
           for state in states]
    failed = listing(partner, endpointId=mine["id"], sequenceAfter=1, status="FAILED")
    assert [(n["id"], n["sequence"]) for n in failed["data"]] == [(ids[1], 2), (ids[3], 4)]


def test_a_deleted_endpoints_notifications_can_still_be_listed(make_partner):
    partner = make_partner()
    gone = create(partner, "http://127.0.0.1:9/gone")
    nid = h.insert_notification(partner.partner_id, "http://127.0.0.1:9/gone",
                                status=NotificationStatus.SENT)
    assert partner.api.delete(f"{ENDPOINTS}/{gone['id']}").status_code == 200
    data = listing(partner, endpointId=gone["id"], sequenceAfter=0)["data"]
    assert [(n["id"], n["endpointId"]) for n in data] == [(nid, gone["id"])]


def test_every_notification_answer_names_its_endpoint(make_partner):
    partner = make_partner("http://127.0.0.1:9/default")
    mine = create(partner, "http://127.0.0.1:9/mine")
    retried = h.insert_notification(partner.partner_id, "http://127.0.0.1:9/mine",
                                    status=NotificationStatus.FAILED)
    ignored = h.insert_notification(partner.partner_id, "http://127.0.0.1:9/mine",
                                    status=NotificationStatus.FAILED)
    no_url = h.insert_notification(partner.partner_id, None,
                                   status=NotificationStatus.NOT_SENT)
    answers = [partner.api.post(f"{LIST}/{retried}/retry"),
               partner.api.post(f"{LIST}/{ignored}/ignore"),
               partner.api.get(f"{LIST}/{retried}")]
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["endpointId"] == mine["id"]
    assert partner.api.get(f"{LIST}/{no_url}").json()["endpointId"] is None
    assert {n["id"]: n["endpointId"] for n in listing(partner)["data"]} == {
        retried: mine["id"], ignored: mine["id"], no_url: None}


def test_callback_url_notifications_reconcile_on_their_own_endpoint(make_partner):
    # An event's callbackUrl is numbered on an unregistered endpoint of that URL: its id
    # is what the merchant reconciles those webhooks with, though /endpoints lists
    # registered endpoints only.
    partner = make_partner("http://127.0.0.1:9/default")
    published = [deliverer.publish_event(partner.partner_id, "transaction.paid", f"TXN-{i}",
                                         {"n": i}, callback_url="http://127.0.0.1:9/callback")
                 for i in range(3)]
    first = partner.api.get(f"{LIST}/{published[0].notification_id}").json()
    assert first["sequence"] == 1 and first["url"] == "http://127.0.0.1:9/callback"
    callback_endpoint = first["endpointId"]
    assert callback_endpoint.startswith("ep_")
    missed = listing(partner, endpointId=callback_endpoint, sequenceAfter=1)["data"]
    assert [(n["id"], n["sequence"]) for n in missed] == [
        (p.notification_id, i) for i, p in enumerate(published[1:], start=2)]
    assert partner.api.get(f"{ENDPOINTS}/{callback_endpoint}").status_code == 404
    assert callback_endpoint not in {e["id"] for e in partner.api.get(ENDPOINTS).json()["data"]}
