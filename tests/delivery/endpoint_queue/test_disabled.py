"""An endpoint that stopped taking webhooks: a 410 Gone disables it until the settings are
saved, turned-off webhooks hold what was queued until they are on again, and a partner
deactivated or moved to polling gets none of it."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.delivery import endpoint_queue, service
from deliverer.models import (
    Alert,
    Endpoint,
    NotificationStatus,
    Partner,
    PartnerFlow,
    WebhookSettings,
    utcnow,
)
from deliverer.partners import webhook_settings
from deliverer.publishing.service import record_event as publish_event
from tests.delivery.endpoint_queue.helpers import endpoint_at, hold, run_drain, save_settings
from tests.support import receiver as rx
from tests.support.helpers import deliver_when_due, insert_notification, new_partner, notification


def test_410_gone_disables_the_endpoint_until_settings_are_saved(settings, receiver):
    url = receiver.always("/gone", rx.status(410))
    partner = new_partner(settings, url)
    now = utcnow()
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=now)
    service.deliver(nid, settings)
    row = notification(nid)
    assert row.status == NotificationStatus.FAILED and row.next_attempt_at is None
    assert row.latest_error_payload["httpStatus"] == 410
    endpoint = endpoint_at(partner.partner_id, url)
    assert endpoint.disabled_at is not None and "410" in (endpoint.disabled_reason or "")
    with session_scope() as session:
        kinds = [a.kind for a in session.scalars(select(Alert))]
    assert kinds == ["endpoint_disabled"]

    with session_scope() as session:
        published = publish_event(session, settings, partner_id=partner.partner_id,
                                  type="invoice.settled", reference="INV-1", payload={})
    assert published.status == NotificationStatus.NOT_SENT
    assert notification(published.notification_id).latest_error_payload["kind"] == (
        "endpoint_disabled")
    assert len(receiver.requests("/gone")) == 1

    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner.partner_id, url=url)
    assert endpoint_at(partner.partner_id, url).disabled_at is None
    # Re-enabled: the notification stopped by the 410 is released like a recovered
    # endpoint's held ones; the one published while disabled was never queued.
    with session_scope() as session:
        assert endpoint_queue.drain(session, settings, utcnow()) == 1
    row = notification(nid)
    assert not row.held and row.next_attempt_at is not None
    assert notification(published.notification_id).status == NotificationStatus.NOT_SENT


def test_notifications_in_flight_at_a_410_raise_one_alert(settings, receiver):
    """Three POSTs in flight when the receiver starts answering 410: each is recorded
    (held), but the endpoint is disabled, and the partner alerted, once."""
    url = receiver.always("/gone-at-once", rx.status(410))
    partner = new_partner(settings, url)
    ids = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
           for _ in range(3)]
    jobs = []
    for nid in ids:  # all claimed before any outcome is recorded
        with session_scope() as session:
            claimed = service.claim(session, nid, settings)
        assert claimed.job is not None
        jobs.append(claimed.job)
    results = [service.perform(job, settings) for job in jobs]
    disabled_at = []
    for job, result in zip(jobs, results, strict=True):
        with session_scope() as session:
            service.record(session, job, result, settings)
        disabled_at.append(endpoint_at(partner.partner_id, url).disabled_at)
    assert len(receiver.requests("/gone-at-once")) == 3
    assert all(notification(n).held for n in ids)
    # The first 410 disabled it; the later ones leave the time (and the alert) alone.
    assert disabled_at[0] is not None and disabled_at == [disabled_at[0]] * 3
    with session_scope() as session:
        alerts = list(session.scalars(select(Alert)))
    assert [(a.kind, a.notification_id) for a in alerts] == [("endpoint_disabled", ids[0])]


def test_notifications_claimed_while_disabled_wait_for_the_endpoint(settings, receiver):
    """Claimed after the 410 (messages already on their way): no request, held, and
    released once the merchant saves the settings."""
    url = receiver.always("/gone-too", rx.status(410))
    partner = new_partner(settings, url)
    first = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    later = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    service.deliver(first, settings)
    assert service.deliver(later, settings).state == service.ClaimState.FINAL
    assert len(receiver.requests("/gone-too")) == 1
    stopped = notification(later)
    assert stopped.held and stopped.next_attempt_at is None
    assert stopped.latest_error_payload["kind"] == "endpoint_disabled"
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner.partner_id, url=url)
    with session_scope() as session:
        assert endpoint_queue.drain(session, settings, utcnow()) == 2
    assert all(not notification(n).held and notification(n).next_attempt_at is not None
               for n in (first, later))


def test_any_save_that_leaves_webhooks_on_enables_the_endpoint_again(settings, receiver):
    """The alert says "save your settings": an alert address alone is a save. Turning
    webhooks off is not a reason to send."""
    url = receiver.always("/gone-again", rx.status(410))
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    service.deliver(nid, settings)
    assert endpoint_at(partner.partner_id, url).disabled_at is not None
    save_settings(partner.partner_id, settings, enabled=False)
    assert endpoint_at(partner.partner_id, url).disabled_at is not None
    assert run_drain(settings) == 0
    save_settings(partner.partner_id, settings, enabled=True, alert_email="ops@example.com")
    assert endpoint_at(partner.partner_id, url).disabled_at is None
    assert run_drain(settings) == 1
    assert not notification(nid).held


def test_turning_webhooks_off_holds_what_was_queued_until_they_are_on(settings, receiver):
    """Queued before the merchant turned webhooks off: no request, held (not spent), and
    sent once they are turned on again; a failing endpoint's head is promoted back."""
    ok_url = receiver.always("/paused", rx.ok())
    partner = new_partner(settings, ok_url)
    queued = insert_notification(partner.partner_id, ok_url, status=NotificationStatus.PENDING,
                                 next_attempt_at=utcnow())
    failing_url = receiver.always("/paused-failing", rx.status(503))
    head = insert_notification(partner.partner_id, failing_url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
    service.deliver(head, settings)  # fails: the endpoint is failing, head on the ladder
    assert len(receiver.requests("/paused-failing")) == 1

    save_settings(partner.partner_id, settings, enabled=False)
    assert service.deliver(queued, settings).state == service.ClaimState.FINAL
    deliver_when_due(head, settings)
    assert receiver.requests("/paused") == []
    assert len(receiver.requests("/paused-failing")) == 1
    for nid in (queued, head):
        row = notification(nid)
        assert row.held and row.next_attempt_at is None and row.attempt_count <= 1
        assert row.latest_error_payload["kind"] == "webhooks_disabled"

    save_settings(partner.partner_id, settings, enabled=True)
    promoted = notification(head)  # failing endpoint: probing resumes with its head
    assert not promoted.held and promoted.next_attempt_at is not None
    assert run_drain(settings) == 1  # healthy endpoint: drained
    service.deliver(queued, settings)
    assert notification(queued).status == NotificationStatus.SENT
    assert len(receiver.requests("/paused")) == 1


def _held_behind_a_410(settings, receiver):
    """A partner whose webhook URL answered 410 to its notification (held)."""
    old_url = receiver.always("/gone-old", rx.status(410))
    partner = new_partner(settings, old_url)
    nid = insert_notification(partner.partner_id, old_url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    service.deliver(nid, settings)
    assert notification(nid).held
    return partner, old_url, nid


def test_a_410_endpoint_moved_to_a_new_url_sends_what_it_held_there(settings, receiver):
    """A new webhook URL is the merchant's answer to a 410: the default endpoint moves
    there, enabled again, and what it held is drained to the new URL."""
    partner, old_url, nid = _held_behind_a_410(settings, receiver)
    gone = endpoint_at(partner.partner_id, old_url)
    new_url = receiver.always("/new", rx.ok())
    save_settings(partner.partner_id, settings, url=new_url)
    moved = endpoint_at(partner.partner_id, new_url)
    assert (moved.id, moved.disabled_at) == (gone.id, None)
    assert run_drain(settings) == 1
    service.deliver(nid, settings)
    row = notification(nid)
    assert (row.status, row.url, row.attempt_count) == (NotificationStatus.SENT, new_url, 2)
    assert len(receiver.requests("/gone-old")) == 1 and len(receiver.requests("/new")) == 1


def test_a_410_endpoint_left_behind_for_a_url_with_history_exhausts_what_it_held(
        settings, receiver):
    """A new webhook URL that has numbers of its own (here a callback URL's) takes the
    default over: the old endpoint is not enabled again, and its held notifications stop
    (FAILED, exhausted) instead of staying held for good; a retry repoints them."""
    partner, old_url, nid = _held_behind_a_410(settings, receiver)
    new_url = receiver.url("/new")
    with session_scope() as session:
        publish_event(session, settings, partner_id=partner.partner_id,
                      type="transaction.paid", reference="TXN-CB", payload={},
                      callback_url=new_url)
    save_settings(partner.partner_id, settings, url=new_url)
    row = notification(nid)
    assert not row.held and row.status == NotificationStatus.FAILED
    assert row.next_attempt_at is None
    assert endpoint_at(partner.partner_id, old_url).disabled_at is not None


def test_turned_off_webhooks_stop_a_drain(settings, receiver):
    """A drain under way when webhooks are turned off releases nothing (each release
    would only be held again at its claim, every sweep) until they are on again."""
    url = receiver.always("/draining", rx.ok())
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    hold(nid)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.url == url).values(draining=True))
        session.execute(update(WebhookSettings)
                        .where(WebhookSettings.partner_id == partner.partner_id)
                        .values(enabled=False))
    assert run_drain(settings) == 0
    save_settings(partner.partner_id, settings, enabled=True)
    assert run_drain(settings) == 1


@pytest.mark.parametrize("change", [{"active": False}, {"flow": PartnerFlow.POLLING}])
def test_a_partner_that_stopped_taking_webhooks_gets_none_of_what_was_queued(
        settings, receiver, change):
    """Deactivated, or moved to polling, after the notification was queued: no request,
    NOT_SENT for good (as what is published for such partners)."""
    url = receiver.always("/former", rx.ok())
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    with session_scope() as session:
        session.execute(update(Partner).where(Partner.id == partner.partner_id).values(change))
    assert service.deliver(nid, settings).state == service.ClaimState.FINAL
    assert receiver.requests("/former") == []
    row = notification(nid)
    assert row.status == NotificationStatus.NOT_SENT and not row.held
    assert row.latest_error_payload["kind"] == "not_a_webhook_partner"
