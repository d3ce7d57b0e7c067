"""What one attempt records: its outcome and error payload for every kind of failure, the
receiver's answer (bounded, whatever its bytes), the trigger, and the signatures it was
sent with."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.delivery.service import ClaimState
from deliverer.delivery.troubleshooting import FailureKind, hint_for
from deliverer.models import (
    Lane,
    Notification,
    NotificationStatus,
    Trigger,
    WebhookSettings,
    utcnow,
)
from tests.delivery.service.helpers import due_now
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.ports import closed_port


def test_successful_delivery(settings, receiver, partner):
    url = receiver.url("/hook")
    nid = due_now(partner, url)
    before = time.monotonic()
    outcome = service.deliver(nid, settings)
    wall_ms = (time.monotonic() - before) * 1000

    assert outcome.state == ClaimState.CLAIMED
    assert outcome.status == NotificationStatus.SENT
    assert outcome.next_attempt is None
    row = h.notification(nid)
    assert row.status == NotificationStatus.SENT
    assert row.sent_at is not None
    assert row.next_attempt_at is None
    assert row.scheduled_for is None
    assert row.lease_token is None and row.lease_expires_at is None
    assert (row.attempt_count, row.retry_attempts) == (1, 0)
    assert row.latest_error_payload is None

    [attempt] = h.attempts(nid)
    assert attempt.success is True
    assert attempt.response_status == 200
    assert attempt.response_body == "ok"
    assert attempt.error_payload is None
    assert attempt.trigger == Trigger.AUTOMATIC
    assert attempt.url == url
    assert attempt.duration_ms <= wall_ms  # the POST's own time, within the delivery's

    [got] = receiver.requests("/hook")
    assert got.headers["webhook-id"] == nid
    assert got.body == h.event_body_of(nid)
    envelope = h.verify_signature(partner.signing_secret, got)
    assert set(envelope) == {"id", "type", "reference", "timestamp", "data"}
    assert envelope["data"] == {"amount": 42}


FAILURES = {
    "500": (rx.status(500), "http_status", 500),
    "404": (rx.status(404), "http_status", 404),
    "401": (rx.status(401), "http_status", 401),
    "redirect": (rx.redirect("https://example.invalid/hook", 302), "redirect", 302),
    "timeout": (rx.sleep(3.0), "timeout", None),
    "reset": (rx.reset(), "connection_reset", None),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_failed_attempt_is_recorded_with_its_error_payload(settings, receiver, partner, name):
    behaviour, kind, status = FAILURES[name]
    url = receiver.always(f"/{name}", behaviour)
    nid = due_now(partner, url)
    quick = settings.with_overrides(total_timeout=0.5)
    before = utcnow()
    outcome = service.deliver(nid, quick)
    after = utcnow()

    assert outcome.status == NotificationStatus.FAILED
    row = h.notification(nid)
    [attempt] = h.attempts(nid)
    assert attempt.success is False
    assert attempt.response_status == status
    assert attempt.error_payload["kind"] == kind
    assert attempt.error_payload["httpStatus"] == status
    assert attempt.error_payload["hint"] == hint_for(FailureKind(kind), status)
    assert attempt.error_payload["message"]
    assert row.latest_error_payload == attempt.error_payload
    assert row.status == NotificationStatus.FAILED
    assert (row.retry_attempts, row.attempt_count) == (1, 1)
    assert row.lane == Lane.RETRY
    # First rung of the ladder: 2 minutes, scaled.
    step = timedelta(seconds=120 * settings.time_scale)
    assert before + step <= row.next_attempt_at <= after + step
    # Due within the sweep horizon: the caller is told to enqueue it, and the row says so.
    assert outcome.next_attempt is not None
    assert outcome.next_attempt.due_at == row.next_attempt_at
    assert outcome.next_attempt.lane == Lane.RETRY
    assert row.scheduled_for == row.next_attempt_at


@pytest.mark.parametrize("code", [200, 500])
def test_a_receivers_answer_is_recorded_whatever_its_bytes(settings, receiver, partner, code):
    """A NUL in the body made PostgreSQL refuse the attempt row: nothing was recorded,
    and the webhook was POSTed again at every lease expiry (a black-box try)."""
    url = receiver.always("/nul", rx.status(code, b"ok\x00nul \xff\xfe end"))
    nid = due_now(partner, url)
    outcome = service.deliver(nid, settings)
    assert outcome.status == (NotificationStatus.SENT if code == 200
                              else NotificationStatus.FAILED)
    [attempt] = h.attempts(nid)
    assert attempt.response_status == code
    assert attempt.response_body == "ok\ufffdnul \ufffd\ufffd end"


def test_what_a_receiver_echoes_into_the_message_is_bounded(settings, receiver, partner):
    location = "http://example.com/" + "L" * 60_000
    url = receiver.always("/far", rx.status(302, headers={"Location": location}))
    nid = due_now(partner, url)
    service.deliver(nid, settings)
    [attempt] = h.attempts(nid)
    message = attempt.error_payload["message"]
    assert message.startswith("HTTP 302 redirect to 'http://example.com/LLL")
    assert len(message) < 600 and message.endswith("(redirects are not followed)")


@pytest.mark.parametrize("target, kind", [
    ("refused", "connection_refused"),
    ("dns", "dns"),
    ("tls", "tls"),
    ("blocked", "blocked_address"),
])
def test_network_failures_are_recorded(settings, receiver, partner, target, kind):
    urls = {
        "refused": f"http://127.0.0.1:{closed_port()}/hook",
        "dns": f"http://{h.UNRESOLVABLE}/hook",
        "tls": receiver.url("/hook", scheme="https"),
        "blocked": receiver.url("/hook"),
    }
    run_settings = settings.with_overrides(allow_private_urls=(target != "blocked"))
    nid = due_now(partner, urls[target])
    with h.unresolvable_host():
        service.deliver(nid, run_settings)
    [attempt] = h.attempts(nid)
    assert attempt.error_payload["kind"] == kind
    assert attempt.error_payload["httpStatus"] is None
    assert attempt.response_status is None
    assert h.notification(nid).latest_error_payload == attempt.error_payload
    assert receiver.requests() == []


def test_rotated_secret_signs_with_both_until_it_expires(settings, receiver, partner):
    old_secret = partner.signing_secret
    from deliverer.delivery.sending.signing import generate_secret

    new_secret = generate_secret()
    with session_scope() as session:
        session.execute(update(WebhookSettings).where(
            WebhookSettings.partner_id == partner.partner_id).values(
            signing_secret=new_secret, previous_secret=old_secret,
            previous_secret_expires_at=utcnow() + timedelta(hours=1)))
    url = receiver.url("/hook")
    service.deliver(due_now(partner, url), settings)
    [got] = receiver.requests("/hook")
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    h.verify_signature(new_secret, got)
    h.verify_signature(old_secret, got)

    with session_scope() as session:
        session.execute(update(WebhookSettings).where(
            WebhookSettings.partner_id == partner.partner_id).values(
            previous_secret_expires_at=utcnow() - timedelta(seconds=1)))
    service.deliver(due_now(partner, url), settings)
    latest = receiver.requests("/hook")[-1]
    assert len(latest.headers["webhook-signature"].split(" ")) == 1
    h.verify_signature(new_secret, latest)


def test_stored_response_body_is_capped(settings, receiver, partner):
    url = receiver.always("/huge", rx.huge(2 * 1024 * 1024, 500))
    nid = due_now(partner, url)
    service.deliver(nid, settings)
    [attempt] = h.attempts(nid)
    assert len(attempt.response_body) == settings.max_response_bytes
    assert attempt.error_payload["httpStatus"] == 500


def test_manual_lane_records_manual_trigger(settings, receiver, partner):
    nid = due_now(partner, receiver.url("/hook"), lane=Lane.MANUAL)
    service.deliver(nid, settings)
    assert h.attempts(nid)[0].trigger == Trigger.MANUAL


def test_attempt_payloads_are_json_round_tripped(settings, receiver, partner):
    url = receiver.always("/err", rx.status(500, "ünïcödé ✓".encode()))
    nid = due_now(partner, url)
    service.deliver(nid, settings)
    with session_scope() as session:
        stored = session.scalar(select(Notification.latest_error_payload)
                                .where(Notification.id == nid))
    assert json.loads(json.dumps(stored)) == stored
    assert h.attempts(nid)[0].response_body == "ünïcödé ✓"
