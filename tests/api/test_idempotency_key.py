"""``POST /internal/v1/events`` with an Idempotency-Key: a producer that did not hear the
answer (a timeout, a 5xx after the commit) sends the same request again and gets the
event already recorded, not a second webhook under another webhook-id."""

from __future__ import annotations

from sqlalchemy import func, select

from deliverer.db import session_scope
from deliverer.models import Event, Notification
from tests.api import helpers as t

EVENTS = "/internal/v1/events"


def counts() -> tuple[int, int]:
    with session_scope() as session:
        return (session.scalar(select(func.count()).select_from(Event)),
                session.scalar(select(func.count()).select_from(Notification)))


def test_a_repeated_keyed_publish_returns_the_first_event(make_partner, admin, receiver,
                                                         worker):
    partner = make_partner(receiver.url("/hook"))
    body = {"partnerId": partner.partner_id, "type": "invoice.paid", "reference": "INV-1",
            "payload": {"total": 5}}
    first = admin.post(EVENTS, json=body, headers={"Idempotency-Key": "order-1"})
    again = admin.post(EVENTS, json=body, headers={"Idempotency-Key": "order-1"})
    assert (first.status_code, again.status_code) == (201, 201), (first.text, again.text)
    assert again.json() == first.json() | {"status": again.json()["status"]}
    [got] = receiver.wait_for(1, "/hook")
    assert got.headers["webhook-id"] == first.json()["notificationId"]
    assert counts() == (1, 1)

    # Another key, or none, is another event.
    other = admin.post(EVENTS, json=body, headers={"Idempotency-Key": "order-2"})
    plain = admin.post(EVENTS, json=body)
    assert other.json()["eventId"] != first.json()["eventId"]
    assert plain.json()["eventId"] not in (first.json()["eventId"], other.json()["eventId"])
    assert counts() == (3, 3)


def test_a_key_reused_for_another_event_is_a_conflict(make_partner, admin, receiver):
    partner = make_partner(receiver.url("/hook"))
    body = {"partnerId": partner.partner_id, "type": "t", "reference": "r", "payload": {}}
    assert admin.post(EVENTS, json=body, headers={"Idempotency-Key": "k"}).status_code == 201
    changed = admin.post(EVENTS, json=body | {"reference": "other"},
                         headers={"Idempotency-Key": "k"})
    t.assert_error(changed, 409, "CONFLICT")
    assert counts() == (1, 1)


def test_a_bad_key_is_a_client_error(make_partner, admin, receiver):
    partner = make_partner(receiver.url("/hook"))
    body = {"partnerId": partner.partner_id, "type": "t", "reference": "r", "payload": {}}
    for key in ("", "k" * 256):
        t.assert_error(admin.post(EVENTS, json=body, headers={"Idempotency-Key": key}),
                       400, "BAD_REQUEST")
    assert counts() == (0, 0)
