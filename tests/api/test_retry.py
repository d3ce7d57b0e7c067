"""POST /api/partner/v2/webhook-notifications/{id}/retry: seed 000, exactly."""

from __future__ import annotations

from datetime import datetime

import pytest

from deliverer.broker import queues
from deliverer.models import NotificationStatus, Trigger
from deliverer.models.base import new_id
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.ports import closed_port
from tests.support.receiver import status
from tests.support.rows import partner_requests

RETRY = "/api/partner/v2/webhook-notifications/{}/retry"
DETAIL = "/api/partner/v2/webhook-notifications/{}"

pytestmark = pytest.mark.usefixtures("worker")


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def dead_url() -> str:
    return f"http://127.0.0.1:{closed_port()}/hook"


# --------------------------------------------------------------------------- 404


@pytest.mark.parametrize("bad_id", [
    "8374f327-38bd-4b0b-b8a7-2524599eb903",  # well-formed, unknown
    "not-a-uuid",
    "123",
    "8374f327-38bd-4b0b-b8a7-2524599eb90",  # one character short
    "8374f327-38bd-4b0b-b8a7-2524599eb903x",
    "%20",
    "' OR '1'='1",
    "x" * 500,
])
def test_unknown_or_malformed_id_is_not_found(make_partner, bad_id):
    partner = make_partner(dead_url())
    response = partner.api.post(RETRY.format(bad_id))
    t.assert_error(response, 404, "NOT_FOUND", t.NOT_FOUND)
    # Refused requests are on record too (the audit trail), never as accepted.
    assert t.accepted(partner.partner_id) == []


def test_another_partners_notification_is_not_found(make_partner):
    owner = make_partner(dead_url(), name="Owner")
    other = make_partner(dead_url(), name="Other")
    nid = h.insert_notification(owner.partner_id, dead_url(), status=NotificationStatus.FAILED)
    before = t.snapshot(nid)
    t.assert_error(other.api.post(RETRY.format(nid)), 404, "NOT_FOUND", t.NOT_FOUND)
    assert t.snapshot(nid) == before
    assert t.accepted(owner.partner_id) == t.accepted(other.partner_id) == []
    # ... while its owner can retry it.
    assert owner.api.post(RETRY.format(nid)).status_code == 200


# --------------------------------------------------------------------------- 409


@pytest.mark.parametrize("state", [NotificationStatus.SENT, NotificationStatus.PENDING,
                                   NotificationStatus.NOT_SENT])
def test_not_failed_is_conflict(make_partner, state):
    partner = make_partner(dead_url())
    nid = h.insert_notification(partner.partner_id, dead_url(), status=state)
    before = t.snapshot(nid)
    response = partner.api.post(RETRY.format(nid))
    t.assert_error(response, 409, "CONFLICT", t.NOT_FAILED)
    assert t.snapshot(nid) == before
    rows = partner_requests(partner.partner_id, kind="retry")
    assert [(r.outcome, r.notification_id) for r in rows] == [("CONFLICT", nid)]


def test_fourth_manual_retry_is_conflict(make_partner):
    partner = make_partner(dead_url())
    nid = h.insert_notification(partner.partner_id, dead_url(), status=NotificationStatus.FAILED,
                                manual_retry_count=3)
    before = t.snapshot(nid)
    t.assert_error(partner.api.post(RETRY.format(nid)), 409, "CONFLICT", t.MAX_MANUAL)
    assert t.snapshot(nid) == before


def test_status_is_checked_before_the_manual_limit(make_partner):
    partner = make_partner(dead_url())
    nid = h.insert_notification(partner.partner_id, dead_url(), status=NotificationStatus.SENT,
                                manual_retry_count=3)
    t.assert_error(partner.api.post(RETRY.format(nid)), 409, "CONFLICT", t.NOT_FAILED)


def test_three_real_manual_retries_then_conflict(make_partner, receiver, slow_ladder):
    """Each manual retry really goes out and fails again; the fourth is refused."""
    url = receiver.always("/down", status(503))
    partner = make_partner(url)
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    for n in (1, 2, 3):
        response = partner.api.post(RETRY.format(nid))
        assert response.status_code == 200, response.text
        assert response.json()["manualRetryCount"] == n
        receiver.wait_for(1 + n, "/down")
        h.wait_until(lambda n=n: h.triggers(nid).count(Trigger.MANUAL) == n
                     and h.status_is(nid, NotificationStatus.FAILED), message=f"manual #{n}")
    t.assert_error(partner.api.post(RETRY.format(nid)), 409, "CONFLICT", t.MAX_MANUAL)
    row = h.notification(nid)
    assert row.manual_retry_count == 3
    assert h.triggers(nid) == [Trigger.AUTOMATIC] + [Trigger.MANUAL] * 3
    assert len(t.accepted(partner.partner_id)) == 3
    assert len(receiver.requests("/down")) == 4


# --------------------------------------------------------------------------- 429


def test_eleventh_retry_in_a_minute_is_rate_limited(make_partner, receiver):
    url = receiver.url("/ok")
    partner = make_partner(url)
    nids = [h.insert_notification(partner.partner_id, url,
                                  status=NotificationStatus.FAILED) for _ in range(12)]
    for nid in nids[:10]:
        response = partner.api.post(RETRY.format(nid))
        assert response.status_code == 200, response.text
    before = t.snapshot(nids[10])
    response = partner.api.post(RETRY.format(nids[10]))
    t.assert_error(response, 429, "TOO_MANY_REQUESTS", t.RATE_LIMITED)
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), response.headers
    assert 1 <= int(retry_after) <= 60
    assert t.snapshot(nids[10]) == before
    # The same for another notification and through the seed 001 route.
    t.assert_error(partner.api.post(f"/api/webhooks/deliveries/{nids[11]}/retry"),
                   429, "TOO_MANY_REQUESTS", t.RATE_LIMITED)
    assert len(t.accepted(partner.partner_id)) == 10
    refused = partner_requests(partner.partner_id, outcome="TOO_MANY_REQUESTS")
    assert [r.notification_id for r in refused] == [nids[10], nids[11]]


def test_rate_limit_is_per_partner(make_partner, receiver):
    url = receiver.url("/ok")
    busy = make_partner(url, name="Busy")
    calm = make_partner(url, name="Calm")
    for _ in range(10):
        nid = h.insert_notification(busy.partner_id, url, status=NotificationStatus.FAILED)
        assert busy.api.post(RETRY.format(nid)).status_code == 200
    one_more = h.insert_notification(busy.partner_id, url, status=NotificationStatus.FAILED)
    t.assert_error(busy.api.post(RETRY.format(one_more)),
                   429, "TOO_MANY_REQUESTS", t.RATE_LIMITED)
    calm_nid = h.insert_notification(calm.partner_id, url, status=NotificationStatus.FAILED)
    assert calm.api.post(RETRY.format(calm_nid)).status_code == 200


def test_refused_requests_do_not_count_towards_the_limit(make_partner, receiver):
    url = receiver.url("/ok")
    partner = make_partner(url)
    sent = h.insert_notification(partner.partner_id, url, status=NotificationStatus.SENT)
    for _ in range(15):
        t.assert_error(partner.api.post(RETRY.format(sent)), 409, "CONFLICT", t.NOT_FAILED)
        t.assert_error(partner.api.post(RETRY.format(new_id())), 404, "NOT_FOUND", t.NOT_FOUND)
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED)
    assert partner.api.post(RETRY.format(nid)).status_code == 200


# --------------------------------------------------------------------------- success


def test_retry_success_semantics(make_partner, receiver, slow_ladder, published_tasks):
    receiver.always("/hook", status(500))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    failed = partner.api.get(DETAIL.format(nid)).json()
    assert failed["status"] == "FAILED"
    assert failed["retryAttempts"] == 1
    assert failed["manualRetryCount"] == 0
    assert failed["latestErrorPayload"]["httpStatus"] == 500
    assert failed["latestErrorPayload"]["hint"]

    receiver.always("/hook", status(200))  # the merchant fixed the endpoint
    published_tasks.clear()
    response = partner.api.post(RETRY.format(nid))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == nid
    assert body["manualRetryCount"] == 1
    assert body["retryAttempts"] == 0
    assert body["latestErrorPayload"] is None
    assert body["status"] == "PENDING"
    assert when(body["cycleStartedAt"]) > when(failed["cycleStartedAt"])
    assert body["nextAttemptAt"] is not None
    assert when(body["nextAttemptAt"]) <= when(body["cycleStartedAt"])  # due now

    # Queued at once, on the manual lane.
    deliveries = [p for p in published_tasks if p["task"] == "deliverer.deliver"]
    assert [(p["args"], p["queue"], p["eta"]) for p in deliveries] == [
        ([nid], queues.MANUAL, None)]

    # Actually redelivered, recorded as a manual attempt, and SENT.
    got = receiver.wait_for(2, "/hook")
    h.verify_signature(partner.signing_secret, got[1])
    assert got[1].headers["webhook-id"] == nid
    assert got[1].body == got[0].body
    h.wait_until(lambda: h.sent(nid), message="SENT after the manual retry")
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.MANUAL]
    detail = partner.api.get(DETAIL.format(nid)).json()
    assert detail["status"] == "SENT"
    assert detail["manualRetryCount"] == 1
    assert detail["attempts"][0]["trigger"] == "manual"
    assert detail["attempts"][0]["success"] is True

    # The request is on record with who asked.
    [row] = t.accepted(partner.partner_id)
    assert row.notification_id == nid
    assert row.api_key_id is not None


def test_manual_retry_that_fails_again_records_a_new_error(make_partner, receiver, slow_ladder):
    receiver.program("/hook", [status(500)], then=status(422))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    assert partner.api.post(RETRY.format(nid)).status_code == 200
    h.wait_until(lambda: h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.MANUAL]
                 and h.status_is(nid, NotificationStatus.FAILED), message="manual attempt")
    detail = partner.api.get(DETAIL.format(nid)).json()
    assert detail["manualRetryCount"] == 1
    assert detail["retryAttempts"] == 1
    assert detail["latestErrorPayload"]["httpStatus"] == 422
    assert "Unprocessable" in detail["latestErrorPayload"]["hint"]
    assert detail["nextAttemptAt"] is not None  # back on the ladder, a fresh cycle


def test_retry_goes_to_the_url_changed_in_settings(make_partner, receiver, slow_ladder):
    partner = make_partner(dead_url())
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    assert h.notification(nid).latest_error_payload["kind"] == "connection_refused"
    new_url = receiver.url("/new-hook")
    response = partner.api.put("/api/partner/v2/webhook-settings", json={"url": new_url})
    assert response.status_code == 200, response.text

    response = partner.api.post(RETRY.format(nid))
    assert response.status_code == 200, response.text
    assert response.json()["url"] == new_url
    got = receiver.wait_for(1, "/new-hook")
    assert got[0].headers["webhook-id"] == nid
    h.wait_until(lambda: h.sent(nid), message="SENT to the new URL")
    attempts = h.attempts(nid)
    assert [(a.trigger, a.success) for a in attempts] == [
        (Trigger.AUTOMATIC, False), (Trigger.MANUAL, True)]
    assert attempts[-1].url == new_url


def test_retry_of_an_event_with_a_callback_url_keeps_it(make_partner, receiver, slow_ladder):
    receiver.program("/callback", [status(500)], then=status(200))
    partner = make_partner(receiver.url("/default"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED,
                             callback_url=receiver.url("/callback"))
    assert partner.api.post(RETRY.format(nid)).status_code == 200
    receiver.wait_for(2, "/callback")
    h.wait_until(lambda: h.sent(nid), message="SENT to the callback URL")
    assert receiver.requests("/default") == []


def test_retry_through_bearer_auth(make_partner, receiver):
    url = receiver.url("/ok")
    partner = make_partner(url)
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED)
    response = partner.bearer.post(RETRY.format(nid))
    assert response.status_code == 200, response.text
    receiver.wait_for(1, "/ok")
    h.wait_until(lambda: h.sent(nid), message="SENT")


@pytest.mark.parametrize("route", [RETRY, "/api/webhooks/deliveries/{}/retry"])
def test_an_upper_case_notification_id_is_the_same_notification(make_partner, receiver,
                                                                route):
    """RFC 9562: UUIDs are read in either case (one copied upper-case was a 404)."""
    url = receiver.url("/ok")
    partner = make_partner(url)
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED)
    assert partner.api.get(DETAIL.format(nid.upper())).json()["id"] == nid
    response = partner.api.post(route.format(nid.upper()))
    assert response.status_code == 200, response.text
    receiver.wait_for(1, "/ok")
    h.wait_until(lambda: h.sent(nid), message="SENT")
    assert [r.notification_id for r in partner_requests(partner.partner_id)] == [nid]


def test_retry_while_the_endpoint_is_disabled_is_refused_until_it_is_enabled(
        make_partner, receiver, slow_ladder):
    """A 410 Gone disabled the endpoint: a retry would only be held again, so it is
    refused (409, saying how to enable it), spends none of the three retries, and
    leaves the notification as it was. Saving the settings enables the endpoint; then
    the retry is accepted and sent, once."""
    receiver.program("/hook", [status(410)], then=status(200))
    url = receiver.url("/hook")
    partner = make_partner(url)
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    held = h.notification(nid)
    assert held.held and held.next_attempt_at is None
    before = t.snapshot(nid)
    endpoint_id = partner.api.get(DETAIL.format(nid)).json()["endpointId"]

    for _ in range(4):  # more than the three a notification allows
        body = t.assert_error(partner.api.post(RETRY.format(nid)), 409, "CONFLICT")
        assert body["message"] == (
            f"Webhook endpoint {endpoint_id} is disabled (The receiver answered 410 Gone): "
            "enable it (save your webhook settings), then retry")
    assert t.snapshot(nid) == before
    assert [r.outcome for r in partner_requests(partner.partner_id, kind="retry")] == [
        "CONFLICT"] * 4

    response = partner.api.put("/api/partner/v2/webhook-settings", json={"url": url})
    assert response.status_code == 200, response.text
    response = partner.api.post(RETRY.format(nid))
    assert response.status_code == 200, response.text
    assert response.json()["manualRetryCount"] == 1
    h.wait_until(lambda: h.sent(nid), message="SENT once enabled")
    assert [r.headers["webhook-id"] for r in receiver.requests("/hook")] == [nid, nid]
