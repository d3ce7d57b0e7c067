"""POST /endpoints/{id}/test (a webhook.test event to that endpoint only, answered with
its attempt's outcome) and POST /endpoints/{id}/recover (a fresh cycle for a period's
FAILED notifications, oldest first, at the drain rate; audited and rate-limited)."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest
from sqlalchemy import select, update

import deliverer
from deliverer.db import session_scope
from deliverer.models import Attempt, Endpoint, Lane, Notification, NotificationStatus, utcnow
from deliverer.notifications.recover import MAX_RECOVERED
from deliverer.scheduling.tasks import sweep_due
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.race import race
from tests.support.receiver import status
from tests.support.rows import partner_requests

ENDPOINTS = "/api/partner/v2/endpoints"

pytestmark = pytest.mark.usefixtures("worker")



def create(partner, url: str, **fields) -> dict:
    response = partner.api.post(ENDPOINTS, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def iso(when) -> str:
    return when.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- test


def test_a_test_event_goes_to_that_endpoint_only_and_reports_delivery(
        make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/default"))
    billing = create(partner, receiver.url("/billing"), eventTypes=["invoice.*"])

    response = partner.api.post(f"{ENDPOINTS}/{billing['id']}/test")

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["endpointId"], body["status"], body["delivered"], body["error"]) == (
        billing["id"], "SENT", True, None)
    [got] = receiver.wait_for(1, "/billing")
    # Signed with the endpoint's own secret; a webhook.test event whatever it subscribes to.
    envelope = h.verify_signature(billing["signingSecret"], got)
    assert envelope["type"] == "webhook.test" and envelope["id"] == body["eventId"]
    assert got.headers["webhook-id"] == body["notificationId"]
    assert receiver.requests("/default") == []
    [audit] = t.accepted(partner.partner_id, kind="endpoint_test")
    assert (audit.notification_id, audit.reference) == (body["notificationId"], billing["id"])
    # It is a notification like any other, listed on its endpoint.
    listed = partner.api.get("/api/partner/v2/webhook-notifications",
                             params={"endpointId": billing["id"]}).json()["data"]
    assert [(n["id"], n["eventType"], n["sequence"]) for n in listed] == [
        (body["notificationId"], "webhook.test", 1)]


def test_a_failed_test_says_why_with_a_hint(make_partner, receiver, long_wait):
    partner = make_partner()
    broken = create(partner, receiver.program("/broken", then=status(500, b"boom")))
    body = partner.api.post(f"{ENDPOINTS}/{broken['id']}/test").json()
    assert (body["status"], body["delivered"]) == ("FAILED", False)
    assert body["error"]["httpStatus"] == 500
    assert body["error"]["kind"] and body["error"]["message"] and body["error"]["hint"]


def test_a_disabled_endpoint_is_not_sent_the_test(make_partner, receiver, long_wait):
    """Refused as a recover or a retry is, saying how to enable it: it was accepted,
    spent a test and left a NOT_SENT event (a black-box try)."""
    partner = make_partner()
    off = create(partner, receiver.url("/off"), enabled=False)
    before = t.row_counts()
    t.assert_error(partner.api.post(f"{ENDPOINTS}/{off['id']}/test"), 409, "CONFLICT",
                   f"Webhook endpoint {off['id']} is disabled (Disabled by the merchant): "
                   f"enable it (PATCH /api/partner/v2/endpoints/{off['id']} with enabled: "
                   "true), then send a test")
    after = t.row_counts()  # the refusal is on the audit trail, nothing else is written
    assert after == before | {"partner_requests": before["partner_requests"] + 1}
    # Webhooks turned off in the settings: nothing is sent to any endpoint.
    on = create(partner, receiver.url("/on"))
    settings = partner.api.put("/api/partner/v2/webhook-settings", json={"enabled": False})
    assert settings.status_code == 200, settings.text
    # Refused as retries are: it made a NOT_SENT row at the webhook URL, not this
    # endpoint's, and spent a test (a black-box try).
    before = t.row_counts()
    t.assert_error(partner.api.post(f"{ENDPOINTS}/{on['id']}/test"), 409, "CONFLICT",
                   "Webhooks are turned off: turn them on in your webhook settings, then "
                   "send a test")
    after = t.row_counts()  # the refusal is on the audit trail, nothing else is written
    assert after == before | {"partner_requests": before["partner_requests"] + 1}
    assert receiver.requests() == []


def test_without_an_outcome_within_the_wait_it_is_pending(make_partner, receiver,
                                                          api_settings):
    partner = make_partner()
    slow = create(partner, receiver.url("/slow"))
    with api_settings(resend_wait_seconds=0.0):
        body = partner.api.post(f"{ENDPOINTS}/{slow['id']}/test").json()
    assert body["status"] in ("PENDING", "SENT")
    h.wait_until(lambda: h.sent(body["notificationId"]))


def test_tests_are_rate_limited(make_partner, receiver, api_settings):
    partner = make_partner()
    endpoint = create(partner, receiver.url("/a"))
    with api_settings(endpoint_test_rate_per_minute=2, resend_wait_seconds=0.0):
        codes = [partner.api.post(f"{ENDPOINTS}/{endpoint['id']}/test").status_code
                 for _ in range(3)]
        limited = partner.api.post(f"{ENDPOINTS}/{endpoint['id']}/test")
    assert codes == [200, 200, 429]
    t.assert_error(limited, 429, "TOO_MANY_REQUESTS")
    assert int(limited.headers["Retry-After"]) >= 1
    outcomes = [r.outcome for r in partner_requests(partner.partner_id, kind="endpoint_test")]
    assert outcomes == ["ACCEPTED", "ACCEPTED", "TOO_MANY_REQUESTS", "TOO_MANY_REQUESTS"]
    assert t.row_counts()["events"] == 2


# --------------------------------------------------------------------------- recover


def failed_on(partner_id: str, url: str, ago: timedelta, **values) -> str:
    """A FAILED, exhausted notification of the endpoint at ``url``, created ``ago``."""
    nid = h.insert_notification(partner_id, url, status=NotificationStatus.FAILED,
                                created_at=utcnow() - ago, retry_attempts=9,
                                latest_error_payload={"kind": "http_status",
                                                      "message": "HTTP 500", "hint": "fix"})
    if values:
        t.set_notification(nid, **values)
    return nid


def recover(partner, endpoint_id: str, **body):
    return partner.api.post(f"{ENDPOINTS}/{endpoint_id}/recover", json=body)


def test_recover_gives_the_periods_failed_notifications_a_fresh_cycle_oldest_first(
        make_partner, receiver, api_settings):
    partner = make_partner(receiver.url("/default"))
    orders = create(partner, receiver.url("/orders"), eventTypes=["transaction.*"])
    url = receiver.url("/orders")
    now = utcnow()
    too_old = failed_on(partner.partner_id, url, timedelta(hours=5))
    # Inserted newest first: the order they are released in comes from their age.
    in_window = [failed_on(partner.partner_id, url, timedelta(minutes=m))
                 for m in (30, 90, 150, 210)]
    held = failed_on(partner.partner_id, url, timedelta(minutes=60), held=True)
    sent = h.insert_notification(partner.partner_id, url, status=NotificationStatus.SENT,
                                 created_at=now - timedelta(minutes=45))
    in_flight = failed_on(partner.partner_id, url, timedelta(minutes=50),
                          lease_token="busy", lease_expires_at=now + timedelta(minutes=5))
    too_new = failed_on(partner.partner_id, url, timedelta(minutes=5))
    other_endpoint = failed_on(partner.partner_id, receiver.url("/default"),
                               timedelta(minutes=40))

    with api_settings(drain_rate=4.0):
        response = recover(partner, orders["id"], since=iso(now - timedelta(hours=4)),
                           until=iso(now - timedelta(minutes=10)))
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["endpointId"], body["recovered"], body["more"]) == (orders["id"], 5, False)

        expected = [in_window[3], in_window[2], in_window[1], held, in_window[0]]
        with session_scope() as session:
            rows = {n.id: n for n in session.scalars(select(Notification))}
        recovered = sorted((rows[nid] for nid in expected), key=lambda n: n.next_attempt_at)
        assert [n.id for n in recovered] == expected
        for row in recovered:
            assert (row.status, row.retry_attempts, row.held, row.lane,
                    row.latest_error_payload, row.manual_retry_count) == (
                NotificationStatus.PENDING, 0, False, Lane.MANUAL, None, 0)
            assert row.cycle_started_at >= now
        gaps = [(b.next_attempt_at - a.next_attempt_at).total_seconds()
                for a, b in itertools.pairwise(recovered)]
        assert gaps == [pytest.approx(0.25)] * 4  # the drain rate
        assert body["lastDueAt"].startswith(iso(recovered[-1].next_attempt_at)[:19])
        for untouched in (too_old, too_new, sent, in_flight, other_endpoint):
            assert rows[untouched].status in (NotificationStatus.FAILED,
                                              NotificationStatus.SENT)
            assert rows[untouched].lane != Lane.MANUAL

        # The sweep hands them over as they fall due; each arrives no earlier.
        sweep_due()
        got = receiver.wait_for(5, "/orders")
    assert {r.headers["webhook-id"] for r in got} == set(expected)
    for request in got:
        due = rows[request.headers["webhook-id"]].next_attempt_at
        assert request.received_at >= due - timedelta(milliseconds=50)
    h.wait_until(lambda: all(h.sent(nid) for nid in expected))
    [audit] = t.accepted(partner.partner_id, kind="recover")
    assert audit.reference == orders["id"]
    # No worker holds the made-up lease: the after-test wait for attempts in flight
    # (_quiesce_deliveries) would wait it out, 10 s for nothing.
    t.set_notification(in_flight, lease_token=None, lease_expires_at=None)


def test_recover_with_include_not_sent_sends_what_it_missed_while_disabled(
        make_partner, receiver, api_settings):
    # After an auto-disable, events published meanwhile were NOT_SENT to it; a resend by
    # reference goes to the webhook URL when the event went there too (the ladder try).
    partner = make_partner(receiver.url("/default"))
    orders = create(partner, receiver.url("/orders"), eventTypes=["transaction.*"])
    since = iso(utcnow() - timedelta(minutes=1))
    path = f"{ENDPOINTS}/{orders['id']}"
    with session_scope() as session:  # what auto-disable does after days of failures
        session.execute(update(Endpoint).where(Endpoint.public_id == orders["id"]).values(
            disabled_at=utcnow(), disabled_reason="Failed continuously for 5 days"))

    def publish(reference: str) -> str:
        published = deliverer.publish_event(partner.partner_id, "transaction.paid",
                                            reference, {})
        [missed] = [d.notification_id for d in published.deliveries
                    if d.endpoint_id == orders["id"]]
        assert h.notification(missed).status == NotificationStatus.NOT_SENT
        return missed

    missed = [publish(f"T{i}") for i in range(4)]
    ignored = missed.pop()  # the merchant ignored this one: it stays so
    assert partner.api.post(f"/api/partner/v2/webhook-notifications/{ignored}/ignore"
                            ).status_code == 200
    delivered = missed.pop()  # a resend delivered this one (its row stays NOT_SENT)
    with session_scope() as session:
        session.add(Attempt(notification_id=delivered, trigger="resend",
                            url=receiver.url("/orders"), started_at=utcnow(),
                            duration_ms=3, success=True, response_status=200))
    # The merchant moves it and enables it: what it missed goes to the new URL.
    assert partner.api.patch(path, json={"url": receiver.url("/orders-new"),
                                         "enabled": True}).status_code == 200
    # One the merchant itself turned off: deliberate, as webhooks turned off.
    assert partner.api.patch(path, json={"enabled": False}).status_code == 200
    turned_off = publish("T-OFF")
    assert partner.api.patch(path, json={"enabled": True}).status_code == 200

    # Without it, FAILED ones only, as before.
    assert recover(partner, orders["id"], since=since).json()["recovered"] == 0
    t.assert_error(recover(partner, orders["id"], since=since, includeNotSent="yes"),
                   400, "BAD_REQUEST")
    with api_settings(drain_rate=20.0):
        body = recover(partner, orders["id"], since=since, includeNotSent=True).json()
        assert (body["recovered"], body["more"]) == (2, False)
        sweep_due()
        got = receiver.wait_for(2, "/orders-new")
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(missed)
    h.wait_until(lambda: all(h.sent(nid) for nid in missed))
    assert receiver.requests("/orders") == []
    for untouched in (ignored, delivered, turned_off):
        assert h.notification(untouched).status == NotificationStatus.NOT_SENT
    # Done: asked again, nothing more.
    assert recover(partner, orders["id"], since=since,
                   includeNotSent=True).json()["recovered"] == 0


def test_a_second_recover_queues_behind_the_first(make_partner, api_settings):
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a")
    first = [failed_on(partner.partner_id, "http://127.0.0.1:9/a", timedelta(minutes=m))
             for m in (10, 20)]
    since = iso(utcnow() - timedelta(hours=1))
    with api_settings(drain_rate=2.0):
        assert recover(partner, endpoint["id"], since=since).json()["recovered"] == 2
        second = failed_on(partner.partner_id, "http://127.0.0.1:9/a", timedelta(minutes=5))
        assert recover(partner, endpoint["id"], since=since).json()["recovered"] == 1
    dues = {nid: h.notification(nid).next_attempt_at for nid in [*first, second]}
    assert (dues[second] - max(dues[nid] for nid in first)).total_seconds() == \
        pytest.approx(0.5)


def test_recover_without_until_runs_to_now_and_counts_nothing_twice(make_partner):
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a")
    failed_on(partner.partner_id, "http://127.0.0.1:9/a", timedelta(seconds=1))
    since = iso(utcnow() - timedelta(days=1))
    assert recover(partner, endpoint["id"], since=since).json()["recovered"] == 1
    # Now PENDING: a repeated request finds nothing more to recover.
    assert recover(partner, endpoint["id"], since=since).json() == {
        "endpointId": endpoint["id"], "recovered": 0, "more": False, "lastDueAt": None}


@pytest.mark.parametrize("body", [
    {}, {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"},  # no offset
    {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
    {"since": "2026-01-01T00:00:00Z", "limit": 5}, {"since": 5}, [],
])
def test_bad_recover_is_400_and_changes_nothing(make_partner, body):
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a")
    nid = failed_on(partner.partner_id, "http://127.0.0.1:9/a", timedelta(minutes=1))
    before = t.snapshot(nid)
    t.assert_error(recover(partner, endpoint["id"], **body) if isinstance(body, dict)
                   else partner.api.post(f"{ENDPOINTS}/{endpoint['id']}/recover",
                                         data=json.dumps(body),
                                         headers={"Content-Type": "application/json"}),
                   400, "BAD_REQUEST")
    assert t.snapshot(nid) == before


def test_recover_of_a_disabled_endpoint_is_409(make_partner):
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a", enabled=False)
    nid = failed_on(partner.partner_id, "http://127.0.0.1:9/a", timedelta(minutes=1))
    response = recover(partner, endpoint["id"], since=iso(utcnow() - timedelta(hours=1)))
    t.assert_error(response, 409, "CONFLICT")
    assert h.notification(nid).status == NotificationStatus.FAILED
    assert [r.outcome for r in partner_requests(partner.partner_id, kind="recover")] == [
        "CONFLICT"]


def test_recover_while_webhooks_are_turned_off_is_409(make_partner):
    # It answered "recovered: 0" for an endpoint with FAILED notifications in the
    # period (a black-box try), where a retry is refused with this message.
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a")
    nid = failed_on(partner.partner_id, "http://127.0.0.1:9/a", timedelta(minutes=1))
    before = h.notification(nid).next_attempt_at
    assert partner.api.put("/api/partner/v2/webhook-settings",
                           json={"enabled": False}).status_code == 200
    response = recover(partner, endpoint["id"], since=iso(utcnow() - timedelta(hours=1)))
    t.assert_error(response, 409, "CONFLICT", "Webhooks are turned off: turn them on in "
                   "your webhook settings, then recover")
    assert h.notification(nid).next_attempt_at == before


def test_recover_is_rate_limited_and_audited(make_partner, api_settings):
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a")
    since = iso(utcnow() - timedelta(hours=1))
    with api_settings(recover_rate_per_minute=2):
        codes = [recover(partner, endpoint["id"], since=since).status_code for _ in range(2)]
        limited = recover(partner, endpoint["id"], since=since)
    assert codes == [200, 200]
    t.assert_error(limited, 429, "TOO_MANY_REQUESTS")
    assert limited.headers["Retry-After"]
    assert [(r.outcome, r.reference) for r in partner_requests(partner.partner_id,
                                                               kind="recover")] == [
        ("ACCEPTED", endpoint["id"]), ("ACCEPTED", endpoint["id"]),
        ("TOO_MANY_REQUESTS", endpoint["id"])]


def test_the_recover_limit_holds_under_parallel_requests(make_partner, api_settings):
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a")
    since = iso(utcnow() - timedelta(hours=1))
    with api_settings(recover_rate_per_minute=3):
        responses = race([lambda: recover(partner, endpoint["id"], since=since)] * 10)
    assert t.statuses(responses) == {200: 3, 429: 7}
    assert len(t.accepted(partner.partner_id, kind="recover")) == 3


def test_recover_takes_at_most_a_bounded_number_at_once(make_partner, monkeypatch):
    monkeypatch.setattr("deliverer.notifications.recover.MAX_RECOVERED", 2)
    assert MAX_RECOVERED > 2
    partner = make_partner()
    endpoint = create(partner, "http://127.0.0.1:9/a")
    ids = [failed_on(partner.partner_id, "http://127.0.0.1:9/a", timedelta(minutes=m))
           for m in (1, 2, 3)]
    since = iso(utcnow() - timedelta(hours=1))
    body = recover(partner, endpoint["id"], since=since).json()
    assert (body["recovered"], body["more"]) == (2, True)
    assert h.notification(ids[0]).status == NotificationStatus.FAILED  # the newest waits
    body = recover(partner, endpoint["id"], since=since).json()
    assert (body["recovered"], body["more"]) == (1, False)
