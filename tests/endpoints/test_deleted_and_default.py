"""Where an endpoint's deliveries go once it is deleted, and what the webhook URL takes
over when it moves to a URL that had a row of its own (findings of a review, each of
which sent a webhook to the wrong place or with the wrong secret)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliverer.db import in_transaction, session_scope
from deliverer.delivery.claim import ClaimState, claim, lease_jobs
from deliverer.delivery.recording.record import record
from deliverer.delivery.sending import sender
from deliverer.delivery.undeliverable import ENDPOINT_DELETED
from deliverer.errors import Conflict, ValidationFailed
from deliverer.models import Endpoint, Notification, NotificationStatus, WebhookSettings, utcnow
from deliverer.notifications.manual_retry import RetryRequest, manual_retries
from deliverer.partners import registered, webhook_settings
from deliverer.publishing.own_transaction import publish_one
from tests.support import helpers as h
from tests.support.backend import ON_POSTGRES

DEFAULT = "http://127.0.0.1:9/default"
BILLING = "http://127.0.0.1:9/billing"


def add(settings, partner_id, url, types=None, **fields):
    with session_scope() as session:
        endpoint = registered.create(session, settings, partner_id, url=url,
                                     event_types=types, **fields)
        session.expunge(endpoint)
    return endpoint


def publish(settings, partner_id, event_type):
    """Published with a wake-up marked pending on each endpoint (PostgreSQL): none is
    sent, so the session's worker, if one runs, does not take the row the test leases."""
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.partner_id == partner_id)
                        .values(wake_sent_at=utcnow()))
    return publish_one(settings, partner_id=partner_id, type=event_type, reference="r",
                       payload={"n": 1})


def delete(partner_id, public_id) -> int:
    with session_scope() as session:
        return registered.delete(session, registered.get(session, partner_id, public_id,
                                                         for_update=True))


def only_transactions_to_default(settings) -> None:
    with session_scope() as session:
        default = session.scalar(select(Endpoint).where(Endpoint.is_default.is_(True)))
        registered.update_endpoint(session, settings, default, event_types=["transaction.*"])


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_delivery_in_flight_when_its_endpoint_is_deleted_is_not_sent_again(settings,
                                                                            in_flight):
    """Each failure recorded after the deletion stops its notification, NOT_SENT for the
    deletion's reason. Several used to join the endpoint's queue behind the first
    failure, held with nothing to release them (a black-box try: FAILED for minutes, a
    merchant's retry accepted and then sent nowhere)."""
    shop = h.new_partner(settings, DEFAULT)
    billing = add(settings, shop.partner_id, BILLING, ["invoice.*"])
    # Written with no broker message: a publish's wake-up let the session's worker lease
    # them first, all of them once in CI (nothing then in flight here).
    nids = [h.insert_notification(shop.partner_id, BILLING, status=NotificationStatus.PENDING,
                                  next_attempt_at=utcnow(), event_type="invoice.settled")
            for _ in range(in_flight)]
    with session_scope() as session:
        _, jobs = lease_jobs(session, nids, settings, utcnow())
    assert len(jobs) == in_flight
    delete(shop.partner_id, billing.public_id)  # those in flight are left to their worker
    failed = sender.SendResult(utcnow(), 5, False, 500, "", {"message": "HTTP 500"})
    for job in jobs:
        in_transaction(lambda session, job=job: record(session, job, failed, settings))
    for nid in (job.notification_id for job in jobs):
        row = h.notification(nid)
        assert row.status == NotificationStatus.NOT_SENT, row.status
        assert row.next_attempt_at is None and not row.held and row.attempt_count == 1
        assert row.latest_error_payload["message"] == ENDPOINT_DELETED
        with session_scope() as session:
            outcome = claim(session, nid, settings, now=utcnow() + timedelta(days=1))
        assert outcome.state != ClaimState.CLAIMED


@pytest.mark.parametrize("before", ["enabled", "merchant_disabled", "gone"])
def test_a_callback_url_of_a_deleted_endpoint_is_sent_to_by_url(settings, receiver, worker,
                                                                  before):
    """The URL of a deleted endpoint, named as an event's callbackUrl: sent there, signed
    with the partner's secret, as any callback URL, and woken at once; nothing of the
    endpoint it was carries over. It was answered PENDING and then stopped, NOT_SENT
    "The endpoint was deleted" (a black-box try). The session's worker delivers it: a
    lease taken here raced the publish's wake-up (CI lost that race twice)."""
    billing_url = receiver.url("/billing")
    shop = h.new_partner(settings, DEFAULT)
    billing = add(settings, shop.partner_id, billing_url, ["invoice.*"], rate_limit=1.0,
                  enabled=before != "merchant_disabled")
    if before == "gone":  # a 410 disabled it after days of failures
        with session_scope() as session:
            session.execute(update(Endpoint).where(Endpoint.url == billing_url).values(
                disabled_at=utcnow(), disabled_reason="The receiver answered 410 Gone",
                failing_since=utcnow() - timedelta(days=6), consecutive_failures=40))
    delete(shop.partner_id, billing.public_id)
    published = publish_one(settings, partner_id=shop.partner_id, type="transaction.paid",
                            reference="CB-1", payload={}, callback_url=billing_url)
    [delivery] = published.deliveries
    assert delivery.status == NotificationStatus.PENDING
    with session_scope() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.url == billing_url))
        assert row is not None and row.deleted_at is None and not row.registered
        assert (row.signing_secret, row.rate_limit, row.disabled_at, row.failing_since,
                row.consecutive_failures) == (None, None, None, None, 0)
        settings_secret = session.get(WebhookSettings, shop.partner_id).signing_secret
    [received] = receiver.wait_for(1, "/billing")
    assert h.verify_signature(settings_secret, received)["reference"] == "CB-1"
    h.wait_until(lambda: h.notification(delivery.notification_id).status
                 == NotificationStatus.SENT, 10, message="the callback's notification SENT")


def test_retrying_a_deleted_endpoints_notification_never_sends_it_to_the_webhook_url(
        settings):
    shop = h.new_partner(settings, DEFAULT)
    only_transactions_to_default(settings)
    billing = add(settings, shop.partner_id, BILLING, ["invoice.*"])
    nid = publish(settings, shop.partner_id, "invoice.settled").deliveries[-1].notification_id
    with session_scope() as session:  # exhausted: deletion leaves it FAILED
        session.execute(update(Notification).where(Notification.id == nid).values(
            status=NotificationStatus.FAILED, next_attempt_at=None, scheduled_for=None))
    delete(shop.partner_id, billing.public_id)
    with session_scope() as session:
        manual_retries(session, settings, [RetryRequest(h.principal(shop), nid)])
    assert h.notification(nid).url == BILLING
    with session_scope() as session:
        assert claim(session, nid, settings).state != ClaimState.CLAIMED
    # The retry's message may reach the session's worker first: its claim leases the row
    # (the one above then finds it leased) and stops it the same way.
    h.wait_until(lambda: h.notification(nid).status == NotificationStatus.NOT_SENT, 10,
                 message="the retried notification stopped for good")
    assert h.notification(nid).url == BILLING


def test_the_webhook_url_moved_to_a_deleted_endpoints_url_signs_with_the_settings_secret(
        settings, receiver, worker):
    billing_url = receiver.url("/billing")
    shop = h.new_partner(settings, DEFAULT)
    billing = add(settings, shop.partner_id, billing_url, ["invoice.*"], rate_limit=5.0)
    delete(shop.partner_id, billing.public_id)
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, shop.partner_id, url=billing_url)
    with session_scope() as session:
        secret = session.get(WebhookSettings, shop.partner_id).signing_secret
        row = session.scalar(select(Endpoint).where(Endpoint.url == billing_url))
        assert (row.is_default, row.rate_limit, row.event_types) == (True, None, None)
    publish_one(settings, partner_id=shop.partner_id, type="transaction.paid",
                reference="moved", payload={})
    [received] = receiver.wait_for(1, "/billing")
    assert h.verify_signature(secret, received)["reference"] == "moved"


def test_the_webhook_url_cannot_take_a_registered_endpoints_url(settings):
    shop = h.new_partner(settings, DEFAULT)
    billing = add(settings, shop.partner_id, BILLING, ["invoice.*"])
    with pytest.raises(Conflict, match=billing.public_id), session_scope() as session:
        webhook_settings.update_settings(session, settings, shop.partner_id, url=BILLING)
    assert {d.endpoint_id is not None for d in
            publish(settings, shop.partner_id, "transaction.paid").deliveries} == {True}


def test_saving_settings_keeps_the_default_endpoint_the_merchant_disabled(settings):
    shop = h.new_partner(settings, DEFAULT)
    with session_scope() as session:
        default = session.scalar(select(Endpoint).where(Endpoint.is_default.is_(True)))
        registered.update_endpoint(session, settings, default, enabled=False)
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, shop.partner_id,
                                         alert_email="ops@example.com")
    with session_scope() as session:
        default = session.scalar(select(Endpoint).where(Endpoint.is_default.is_(True)))
        assert default.disabled_reason == registered.DISABLED_BY_MERCHANT


@pytest.mark.skipif(not ON_POSTGRES, reason="SQLite's transactions take the write lock "
                    "at their start: a save cannot commit between the read and the change")
def test_a_change_read_before_a_settings_save_sees_what_the_save_left(settings):
    """The portal reads an endpoint without a lock: a save of the webhook URL committed
    between its read and its change moved the default elsewhere, and deleting the old
    default then wiped the new webhook URL (a review's finding). The new URL has numbers
    of its own (a callback URL's), so the save makes its row the default."""
    shop = h.new_partner(settings, DEFAULT)
    publish_one(settings, partner_id=shop.partner_id, type="transaction.paid", reference="r",
                payload={}, callback_url=BILLING)
    with session_scope() as session:
        stale = session.scalar(select(Endpoint).where(Endpoint.partner_id == shop.partner_id,
                                                      Endpoint.is_default.is_(True)))
        assert stale is not None
        with session_scope() as other:  # committed meanwhile
            webhook_settings.update_settings(other, settings, shop.partner_id, url=BILLING)
        with pytest.raises(registered.EndpointNotFound):
            registered.delete(session, stale)
    with session_scope() as session:
        assert session.get(WebhookSettings, shop.partner_id).url == BILLING
        default = session.scalar(select(Endpoint).where(Endpoint.partner_id == shop.partner_id,
                                                        Endpoint.is_default.is_(True)))
        assert default is not None and default.url == BILLING


@pytest.mark.parametrize("rate", [1e-12, 0.0009, 0.0])
def test_a_vanishing_rate_limit_is_refused(settings, rate):
    shop = h.new_partner(settings, DEFAULT)
    with pytest.raises(ValidationFailed), session_scope() as session:
        registered.create(session, settings, shop.partner_id, url=BILLING, rate_limit=rate)
