"""``POST /internal/v1/events`` with an Idempotency-Key: a producer that did not hear the
answer (a timeout, a 5xx after the commit) sends the same request again and gets the
event already recorded, not a second webhook under another webhook-id."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import deliverer
from deliverer.db import session_scope
from deliverer.models import Event, Notification
from tests.api import helpers as t
from tests.support.db_faults import failing_inserts

EVENTS = "/internal/v1/events"


def without_status(published: dict) -> dict:
    return {k: v for k, v in published.items() if k != "status"} | {
        "deliveries": [{k: v for k, v in d.items() if k != "status"}
                       for d in published["deliveries"]]}


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
    # The same event and notifications; their statuses are as they are now (the worker
    # may have delivered in between).
    assert without_status(again.json()) == without_status(first.json())
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


def test_a_key_that_is_not_ascii_is_the_same_key_over_http_and_in_python(make_partner,
                                                                          admin, receiver):
    partner = make_partner(receiver.url("/hook"))
    fields = {"type": "invoice.paid", "reference": "INV-1", "payload": {"total": 5}}
    key = "commande-été-€1"
    first = deliverer.publish_event(partner.partner_id, **fields, idempotency_key=key)
    body = {"partnerId": partner.partner_id, **fields}
    # Sent as UTF-8 bytes, as most HTTP clients send such text.
    again = admin.post(EVENTS, json=body, headers={"Idempotency-Key": key.encode()})
    assert again.status_code == 201, again.text
    assert again.json()["eventId"] == first.event_id
    # Bytes that are not UTF-8 are read as Latin-1 (requests sends a str so): their own key.
    latin = admin.post(EVENTS, json=body, headers={"Idempotency-Key": "clé"})
    assert latin.status_code == 201, latin.text
    assert deliverer.publish_event(partner.partner_id, **fields,
                                   idempotency_key="clé").event_id == latin.json()["eventId"]
    assert counts() == (2, 2)


# ------------------------------------------------- the two entry points publish alike


@pytest.fixture(params=["http", "python"])
def publish(request, admin):
    """``publish(partner_id, key)``: the event id, or None if the producer was told of
    an error; over ``POST /internal/v1/events`` or ``deliverer.publish_event``."""
    fields = {"type": "invoice.paid", "reference": "INV-1", "payload": {"total": 5}}

    def over_http(partner_id: str, key: str | None) -> str | None:
        response = admin.post(EVENTS, json={"partnerId": partner_id, **fields},
                              headers={"Idempotency-Key": key} if key else {})
        if response.status_code == 503:
            return None
        assert response.status_code == 201, response.text
        return response.json()["eventId"]

    def over_python(partner_id: str, key: str | None) -> str | None:
        try:
            return deliverer.publish_event(partner_id, **fields,
                                           idempotency_key=key).event_id
        except OperationalError:
            return None

    return over_http if request.param == "http" else over_python


@pytest.mark.parametrize("after_commit", [False, True])
def test_a_keyed_publish_rides_out_a_lost_connection(make_partner, receiver, publish,
                                                    after_commit):
    """Before: ``deliverer.publish_event`` ran a keyed publish once (no retry window,
    where the HTTP API had 2 s), so a connection lost on its INSERT or its COMMIT reached
    the producer, who could not tell whether the event was recorded."""
    partner = make_partner(receiver.url("/hook"))
    with failing_inserts("events", partner.partner_id, after_commit=after_commit) as faults:
        event_id = publish(partner.partner_id, "order-1")
    assert faults == [1]
    assert event_id is not None
    with session_scope() as session:
        assert session.scalars(select(Event.id)).all() == [event_id]
    assert counts() == (1, 1)


def test_an_unkeyed_publish_is_not_run_again_after_a_lost_connection(make_partner, receiver,
                                                                     publish):
    """Without a key a second run cannot tell that the first committed: the producer
    hears of the error, and the event is recorded once."""
    partner = make_partner(receiver.url("/hook"))
    with failing_inserts("events", partner.partner_id, after_commit=True) as faults:
        assert publish(partner.partner_id, None) is None
    assert faults == [1]
    assert counts() == (1, 1)
