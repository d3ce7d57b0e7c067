"""Per-endpoint retry queues: a failing endpoint is probed by one notification at a time,
and drains in order once it recovers. Driven through the real service and sender against
a real loopback receiver; the worker is not needed for these."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from deliverer.db import session_scope
from deliverer.delivery import batch, endpoint_queue, service
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sending import still_there
from deliverer.models import (
    Alert,
    Endpoint,
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    PartnerFlow,
    Trigger,
    WebhookSettings,
    utcnow,
)
from deliverer.partners import registered, webhook_settings
from deliverer.partners.service import NewPartner
from deliverer.publishing.service import record_event as publish_event
from deliverer.retry_ladder import Ladder
from deliverer.scheduling.sweep import collect_due
from tests.support import receiver as rx
from tests.support.helpers import (
    deliver_when_due,
    insert_notification,
    new_partner,
    notification,
    wait_until,
)


def _registered(settings, url: str) -> tuple[NewPartner, int]:
    """A new partner with one registered endpoint at ``url``: the partner, the endpoint's
    key."""
    partner = new_partner(settings, None)
    with session_scope() as session:
        key = registered.create(session, settings, partner.partner_id, url=url).id
        session.commit()
    return partner, key


def _move(settings, endpoint_id: int, url: str) -> None:
    """PATCH the endpoint's URL, committed."""
    with session_scope() as session:
        registered.update_endpoint(session, settings, session.get(Endpoint, endpoint_id),
                                   url=url)
        session.commit()


def _endpoint(partner_id: str, url: str) -> Endpoint:
    with session_scope() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.partner_id == partner_id,
                                                    Endpoint.url == url))
        assert row is not None
        session.expunge(row)
        return row


def test_dead_endpoint_is_probed_by_its_earliest_notification_only(settings, receiver):
    dead_url = receiver.always("/dead", rx.status(503))
    ok_url = receiver.always("/ok", rx.ok())
    dead = new_partner(settings, dead_url, name="Dead")
    healthy = new_partner(settings, ok_url, name="Healthy")
    now = utcnow()
    ids = [insert_notification(dead.partner_id, dead_url, status=NotificationStatus.PENDING,
                               next_attempt_at=now) for _ in range(4)]
    fine = [insert_notification(healthy.partner_id, ok_url, status=NotificationStatus.PENDING,
                                next_attempt_at=now)
            for _ in range(3)]

    for nid in ids:  # every fresh notification is tried once
        service.deliver(nid, settings)
    for nid in fine:
        assert service.deliver(nid, settings).status == NotificationStatus.SENT

    head, *rest = (notification(n) for n in ids)
    assert head.status == NotificationStatus.FAILED and not head.held
    assert head.next_attempt_at is not None
    for row in rest:
        assert row.status == NotificationStatus.FAILED
        assert row.held and row.next_attempt_at is None
    assert len(receiver.requests("/dead")) == 4
    assert len(receiver.requests("/ok")) == 3

    # Over several ladder steps, only the head is retried: one request at a time.
    for step in range(3):
        outcome = deliver_when_due(ids[0], settings)
        assert outcome.status == NotificationStatus.FAILED
        with session_scope() as session:
            due = collect_due(session, settings, now=utcnow(), limit=100)
        assert {d.notification_id for d in due} <= {ids[0]}
        assert len(receiver.requests("/dead")) == 4 + step + 1
    for nid in ids[1:]:
        assert notification(nid).held


def test_a_fresh_failure_behind_held_ones_hands_the_head_to_the_earliest(settings,
                                                                         receiver):
    """An upgrade try: the endpoint recovered, failed again before its held notifications
    drained, and the fresh failure took the head; under steady traffic each new failure
    did, and hundreds of older webhooks waited (seq 375 sent, 270 earlier unsent). The
    earliest held one probes the endpoint instead, at the fresh one's next time."""
    url = receiver.program("/flaky", [rx.status(500), rx.ok()], rx.status(500))
    shop = new_partner(settings, url, name="Flaky")
    now = utcnow()
    ids = [insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=now) for _ in range(3)]
    service.deliver(ids[0], settings)  # 500: the head
    assert notification(ids[0]).next_attempt_at is not None
    with session_scope() as session:  # two more fail behind it: held
        session.execute(update(Notification).where(Notification.id.in_(ids[1:]))
                        .values(status=NotificationStatus.FAILED, held=True,
                                next_attempt_at=None))
    assert deliver_when_due(ids[0], settings).status == NotificationStatus.SENT  # recovered
    assert _endpoint(shop.partner_id, url).draining
    fresh = insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    failed_again = service.deliver(fresh, settings)  # 500 again, before any drain
    assert failed_again.status == NotificationStatus.FAILED
    row, first_held, second_held = notification(fresh), notification(ids[1]), \
        notification(ids[2])
    assert row.held and row.next_attempt_at is None
    assert not first_held.held and first_held.next_attempt_at is not None
    assert second_held.held
    # The earliest probes next: the fresh one waits its turn.
    assert deliver_when_due(ids[1], settings).status == NotificationStatus.FAILED
    with session_scope() as session:
        due = collect_due(session, settings, now=utcnow() + timedelta(days=1), limit=100)
    assert {d.notification_id for d in due} == {ids[1]}


def test_recovery_drains_in_order_at_a_bounded_rate(settings, receiver, override_settings):
    url = receiver.program("/flaky", [rx.status(500)] * 5, rx.ok())
    partner = new_partner(settings, url)
    now = utcnow()
    ids = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=now) for _ in range(5)]
    for nid in ids:
        service.deliver(nid, settings)
    assert [notification(n).held for n in ids] == [False, True, True, True, True]

    with override_settings(drain_rate=20.0, sweep_interval=0.1) as s:
        assert deliver_when_due(ids[0], s).status == NotificationStatus.SENT
        assert _endpoint(partner.partner_id, url).draining
        released_at: dict[str, object] = {}

        def all_released() -> bool:
            with session_scope() as session:
                endpoint_queue.drain(session, s, utcnow())
            for nid in ids[1:]:
                row = notification(nid)
                if not row.held and nid not in released_at:
                    released_at[nid] = row.next_attempt_at
            return len(released_at) == 4

        wait_until(all_released, 5.0, interval=0.1, message="the held ones released")
        assert len(released_at) == 4
        # Released in sequence order, never two at the same instant (bounded rate).
        times = [released_at[n] for n in ids[1:]]
        assert times == sorted(times)
        assert len(set(times)) == 4
        for nid in ids[1:]:
            assert deliver_when_due(nid, s).status == NotificationStatus.SENT
    order = [r.headers["webhook-id"] for r in receiver.requests("/flaky")[5:]]
    assert order == ids


def test_exhausted_head_hands_over_to_the_next(settings, receiver, override_settings):
    url = receiver.always("/down", rx.status(500))
    partner = new_partner(settings, url)
    short = Ladder(steps=(0.3,), repeat=0.3, max_age=1.0)
    with override_settings(ladder=short, time_scale=1.0) as s:
        now = utcnow()
        first, second = (insert_notification(partner.partner_id, url,
                                             status=NotificationStatus.PENDING, next_attempt_at=now)
                         for _ in range(2))
        service.deliver(first, s)
        service.deliver(second, s)
        assert notification(second).held
        for _ in range(10):
            if notification(first).next_attempt_at is None:
                break
            deliver_when_due(first, s)
        head = notification(first)
        assert head.status == NotificationStatus.FAILED and head.next_attempt_at is None
        promoted = notification(second)
        assert not promoted.held and promoted.next_attempt_at is not None


def test_held_ones_past_their_cycle_are_exhausted_not_sent_when_their_turn_comes(
        settings, receiver, override_settings):
    # After a head exhausted, the next held one was promoted and POSTed though its own
    # 30 days had run out, then the next, one a sweep (the ladder try).
    url = receiver.always("/down", rx.status(500))
    partner = new_partner(settings, url)
    short = Ladder(steps=(0.3,), repeat=0.3, max_age=60.0)
    with override_settings(ladder=short, time_scale=1.0) as s:
        now = utcnow()
        head = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                   next_attempt_at=now)
        service.deliver(head, s)
        *expired, live = (insert_notification(partner.partner_id, url,
                                              status=NotificationStatus.PENDING,
                                              next_attempt_at=now) for _ in range(3))
        for nid in (*expired, live):
            service.deliver(nid, s)  # each tried once (its first attempt), then held
            assert notification(nid).held
        with session_scope() as session:  # held long: their 30 days (here 60 s) ran out
            session.execute(update(Notification).where(Notification.id.in_(expired))
                            .values(cycle_started_at=now - timedelta(seconds=61)))
        endpoint_id = _endpoint(partner.partner_id, url).id
        with session_scope() as session:  # the head runs out: the next one's turn
            session.execute(update(Notification).where(Notification.id == head)
                            .values(next_attempt_at=None))
            endpoint_queue.promote_next(session, endpoint_id, utcnow())
        assert notification(expired[0]).next_attempt_at is not None
        requests = len(receiver.requests("/down"))
        service.deliver(expired[0], s)
        assert len(receiver.requests("/down")) == requests  # no POST past its cycle
        for nid in expired:
            row = notification(nid)
            assert (row.status, row.held, row.next_attempt_at) == (
                NotificationStatus.FAILED, False, None)
        promoted = notification(live)
        assert not promoted.held and promoted.next_attempt_at is not None
        assert deliver_when_due(live, s).status == NotificationStatus.FAILED
        assert len(receiver.requests("/down")) == requests + 1
    with session_scope() as session:  # no head left climbing beside the session's worker
        session.execute(update(Notification).where(Notification.id == live)
                        .values(next_attempt_at=None))


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
    endpoint = _endpoint(partner.partner_id, url)
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
    assert _endpoint(partner.partner_id, url).disabled_at is None
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
        disabled_at.append(_endpoint(partner.partner_id, url).disabled_at)
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


def _save(partner_id: str, settings, **changes) -> None:
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, partner_id, **changes)


def _drain(settings) -> int:
    with session_scope() as session:
        return endpoint_queue.drain(session, settings, utcnow())


def test_any_save_that_leaves_webhooks_on_enables_the_endpoint_again(settings, receiver):
    """The alert says "save your settings": an alert address alone is a save. Turning
    webhooks off is not a reason to send."""
    url = receiver.always("/gone-again", rx.status(410))
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    service.deliver(nid, settings)
    assert _endpoint(partner.partner_id, url).disabled_at is not None
    _save(partner.partner_id, settings, enabled=False)
    assert _endpoint(partner.partner_id, url).disabled_at is not None
    assert _drain(settings) == 0
    _save(partner.partner_id, settings, enabled=True, alert_email="ops@example.com")
    assert _endpoint(partner.partner_id, url).disabled_at is None
    assert _drain(settings) == 1
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

    _save(partner.partner_id, settings, enabled=False)
    assert service.deliver(queued, settings).state == service.ClaimState.FINAL
    deliver_when_due(head, settings)
    assert receiver.requests("/paused") == []
    assert len(receiver.requests("/paused-failing")) == 1
    for nid in (queued, head):
        row = notification(nid)
        assert row.held and row.next_attempt_at is None and row.attempt_count <= 1
        assert row.latest_error_payload["kind"] == "webhooks_disabled"

    _save(partner.partner_id, settings, enabled=True)
    promoted = notification(head)  # failing endpoint: probing resumes with its head
    assert not promoted.held and promoted.next_attempt_at is not None
    assert _drain(settings) == 1  # healthy endpoint: drained
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
    gone = _endpoint(partner.partner_id, old_url)
    new_url = receiver.always("/new", rx.ok())
    _save(partner.partner_id, settings, url=new_url)
    moved = _endpoint(partner.partner_id, new_url)
    assert (moved.id, moved.disabled_at) == (gone.id, None)
    assert _drain(settings) == 1
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
    _save(partner.partner_id, settings, url=new_url)
    row = notification(nid)
    assert not row.held and row.status == NotificationStatus.FAILED
    assert row.next_attempt_at is None
    assert _endpoint(partner.partner_id, old_url).disabled_at is not None


def test_turned_off_webhooks_stop_a_drain(settings, receiver):
    """A drain under way when webhooks are turned off releases nothing (each release
    would only be held again at its claim, every sweep) until they are on again."""
    url = receiver.always("/draining", rx.ok())
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    _hold(nid)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.url == url).values(draining=True))
        session.execute(update(WebhookSettings)
                        .where(WebhookSettings.partner_id == partner.partner_id)
                        .values(enabled=False))
    assert _drain(settings) == 0
    _save(partner.partner_id, settings, enabled=True)
    assert _drain(settings) == 1


def _hold(*ids: str) -> None:
    """Held, as a race can leave a notification: nothing scheduled to release it."""
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id.in_(ids))
                        .values(held=True, status=NotificationStatus.FAILED,
                                next_attempt_at=None, scheduled_for=None))


def _repair() -> int:
    with session_scope() as session:
        return endpoint_queue.repair(session, utcnow())


def test_repair_releases_queues_that_nothing_else_would(settings, receiver):
    """The net under the queues: a healthy endpoint that holds notifications but is not
    draining is set draining; a failing one with no head and nothing pending gets its
    next held notification promoted. Queues that are moving are left alone."""
    partner = new_partner(settings, receiver.url("/x"))
    healthy_url, failing_url = receiver.url("/healthy"), receiver.url("/failing")
    probed_url, off_url = receiver.url("/probed"), receiver.url("/disabled")
    stuck = insert_notification(partner.partner_id, healthy_url, status=NotificationStatus.PENDING,
                                next_attempt_at=None)
    first, second = (insert_notification(partner.partner_id, failing_url,
                                         status=NotificationStatus.PENDING, next_attempt_at=None)
                     for _ in range(2))
    head = insert_notification(partner.partner_id, probed_url, lane=Lane.FIRST,
                               status=NotificationStatus.FAILED,
                               next_attempt_at=utcnow() + timedelta(hours=1))
    behind = insert_notification(partner.partner_id, probed_url, status=NotificationStatus.PENDING,
                                 next_attempt_at=None)
    gone = insert_notification(partner.partner_id, off_url, status=NotificationStatus.PENDING,
                               next_attempt_at=None)
    _hold(stuck, first, second, behind, gone)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.url.in_([failing_url, probed_url]))
                        .values(failing_since=utcnow()))
        session.execute(update(Endpoint).where(Endpoint.url == off_url)
                        .values(disabled_at=utcnow(), disabled_reason="410"))

    assert _repair() == 2  # the healthy one and the failing one without a head
    assert _endpoint(partner.partner_id, healthy_url).draining
    promoted = notification(first)
    assert not promoted.held and promoted.next_attempt_at is not None
    assert notification(second).held  # one probe at a time
    assert notification(behind).held and notification(head).next_attempt_at is not None
    assert notification(gone).held  # waits for the merchant to save the settings
    assert _repair() == 0  # now moving: a head climbs, a drain runs
    assert _drain(settings) == 1 and not notification(stuck).held


def test_repair_promotes_a_head_on_a_failing_endpoint_left_draining(settings, receiver):
    """Failing and draining with no head: the drain waits for the endpoint to be healthy,
    which only a head's success would make it, and the repair skipped draining endpoints
    (a review: a change since reverted reached this state). The next held one probes."""
    partner = new_partner(settings, receiver.url("/x"))
    url = receiver.url("/failing-draining")
    first, second = (insert_notification(partner.partner_id, url,
                                         status=NotificationStatus.PENDING, next_attempt_at=None)
                     for _ in range(2))
    _hold(first, second)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.url == url)
                        .values(failing_since=utcnow(), draining=True))
    assert _repair() == 1
    promoted = notification(first)
    assert not promoted.held and promoted.next_attempt_at is not None
    assert notification(second).held
    assert _repair() == 0  # a head climbs


def test_repair_leaves_partners_with_webhooks_off_alone(settings, receiver):
    url = receiver.url("/paused-repair")
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=None)
    _hold(nid)
    _save(partner.partner_id, settings, enabled=False)
    assert _repair() == 0
    assert not _endpoint(partner.partner_id, url).draining


def test_the_beat_runs_the_repair(settings):
    import beat_schedule

    entry = beat_schedule.build(settings)["repair-held-queues"]
    assert entry["task"] == "deliverer.repair_queues"
    assert entry["schedule"].total_seconds() == pytest.approx(settings.sweep_interval * 12)


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


def test_a_retry_after_pauses_the_endpoint_not_only_its_head(settings, receiver,
                                                             override_settings):
    """A 429 "Retry-After: 1500" (1.5 s scaled) was honoured for the notification that got
    it, while every fresh one was POSTed at once into the pause (a black-box try)."""
    url = receiver.program("/busy", [rx.retry_after("1500", 429)], rx.ok())
    partner = new_partner(settings, url)
    head = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
    assert service.deliver(head, settings).status == NotificationStatus.FAILED
    until = _endpoint(partner.partner_id, url).retry_after_until
    assert until is not None
    fresh = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=utcnow()) for _ in range(3)]
    for nid in fresh:  # claimed in the pause: no request, held behind the head
        service.deliver(nid, settings)
        row = notification(nid)
        assert (row.status, row.held, row.attempt_count) == (NotificationStatus.FAILED, True, 0)
        assert row.latest_error_payload["kind"] == "endpoint_paused"
    assert len(receiver.requests("/busy")) == 1
    with override_settings(drain_rate=20.0) as s:
        assert deliver_when_due(head, s).status == NotificationStatus.SENT  # after the pause
        with session_scope() as session:
            assert endpoint_queue.drain(session, s, utcnow()) == 3
            session.commit()
        for nid in fresh:
            assert deliver_when_due(nid, s).status == NotificationStatus.SENT
    requests = receiver.requests("/busy")
    assert [r.headers["webhook-id"] for r in requests] == [head, head, *fresh]  # in order
    assert all(r.received_at >= until for r in requests[1:])


def test_a_merchants_retry_is_not_held_by_a_retry_after(settings, receiver):
    url = receiver.program("/busy", [rx.retry_after("60000", 429)], rx.ok())
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=utcnow())
    service.deliver(nid, settings)
    assert _endpoint(partner.partner_id, url).retry_after_until > utcnow()  # paused
    automatic, manual = (
        insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                            next_attempt_at=utcnow()) for _ in range(2))
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == manual)
                        .values(lane=Lane.MANUAL))
    service.deliver(automatic, settings)
    assert notification(automatic).held
    assert service.deliver(manual, settings).status == NotificationStatus.SENT


def test_recovery_retries_a_head_whose_message_was_lost(settings, receiver):
    """The head was due, its message lost (a worker killed, a broker restart): the sweep
    left it to the lost-message grace while the held ones drained before it."""
    url = receiver.program("/flaky", [rx.status(500)] * 2, rx.ok())
    partner = new_partner(settings, url)
    ids = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow()) for _ in range(2)]
    for nid in ids:
        service.deliver(nid, settings)
    head = ids[0]
    wait_until(lambda: notification(head).next_attempt_at <= utcnow(), message="head due")
    with session_scope() as session:  # its message was sent, then lost
        session.execute(update(Notification).where(Notification.id == head)
                        .values(scheduled_for=Notification.next_attempt_at,
                                enqueued_at=utcnow()))
        session.commit()
        endpoint_queue.on_recovery(session, notification(head).endpoint_id, utcnow())
        session.commit()
    with session_scope() as session:
        due = collect_due(session, settings, now=utcnow())
        session.rollback()
    assert head in {d.notification_id for d in due}


def test_a_url_move_drains_what_the_endpoint_held(settings, receiver):
    """PATCH /endpoints/{id} with a new URL: the head succeeded there, which made no
    recovery (the move had reset the endpoint's health), so the held ones waited for the
    queue repair, a minute (a black-box try)."""
    old = receiver.always("/old", rx.status(500))
    partner = new_partner(settings, None)
    with session_scope() as session:
        endpoint = registered.create(session, settings, partner.partner_id, url=old)
        session.commit()
        key = endpoint.id
    ids = [insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow()) for _ in range(3)]
    for nid in ids:
        service.deliver(nid, settings)
    assert [notification(n).held for n in ids] == [False, True, True]
    new = receiver.always("/new", rx.ok())
    with session_scope() as session:
        endpoint = session.get(Endpoint, key)
        registered.update_endpoint(session, settings, endpoint, url=new)
        session.commit()
    assert _endpoint(partner.partner_id, new).draining
    with session_scope() as session:
        assert endpoint_queue.drain(session, settings, utcnow()) == 2
        session.commit()
    for nid in ids:
        assert deliver_when_due(nid, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 3


def _moved_mid_post(settings, receiver, old_answer, count: int, deliver, **row):
    """A registered endpoint at /old (each POST held until the move, then ``old_answer``)
    with ``count`` due notifications (``row``: more of their columns); ``deliver(ids)``
    runs in a thread, and PATCH moves the endpoint to /new while its first POST is out.
    Returns the ids, the new URL and what ``deliver`` returned."""
    release = threading.Event()
    old = receiver.always("/old", rx.held(release, old_answer))
    new = receiver.always("/new", rx.ok())
    partner, key = _registered(settings, old)
    ids = [insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow(), **row) for _ in range(count)]
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(deliver, ids)
        receiver.wait_for(1, "/old")
        _move(settings, key, new)
        release.set()
        return ids, new, in_flight.result(timeout=30)


@pytest.mark.parametrize("answer", [500, 410])
def test_the_old_urls_answer_after_a_move_is_not_the_new_urls(settings, receiver, answer):
    """An attempt in flight to the old URL fails after PATCH moved the endpoint: the new
    URL, which has not failed, was marked failing (its other notifications held behind a
    ladder step, the console showing the old URL's error) or, for a 410, disabled."""
    (first, second), new, outcome = _moved_mid_post(
        settings, receiver, rx.status(answer), 2, lambda ids: service.deliver(ids[0], settings))
    assert outcome.status == NotificationStatus.FAILED
    endpoint = _endpoint(notification(first).partner_id, new)
    assert (endpoint.failing_since, endpoint.consecutive_failures, endpoint.last_error,
            endpoint.disabled_at) == (None, 0, None, None)
    row = notification(first)
    assert (row.url, row.attempt_count, row.held) == (new, 1, False)
    assert row.next_attempt_at <= utcnow()  # tried at the new URL now, not a ladder step on
    assert service.deliver(second, settings).status == NotificationStatus.SENT
    assert service.deliver(first, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 2


def test_the_old_urls_failure_on_the_last_rung_still_tries_the_new_url(settings, receiver):
    """The cycle's 30 days ran out while the attempt to the old URL was out: its failure
    exhausted the notification, and the URL the merchant moved to never had a try (a
    webhook lost to a move). Due at once there, within the cycle (the claim exhausts
    one due past it)."""
    max_age = timedelta(seconds=settings.ladder.max_age * settings.time_scale)
    (first,), _new, outcome = _moved_mid_post(
        settings, receiver, rx.status(500), 1, lambda ids: service.deliver(ids[0], settings),
        cycle_started_at=utcnow() - max_age - timedelta(seconds=1), retry_attempts=12)
    assert outcome.status == NotificationStatus.FAILED
    row = notification(first)
    assert row.next_attempt_at is not None and row.next_attempt_at <= utcnow()
    assert service.deliver(first, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 1


def test_the_old_urls_failure_after_a_move_waits_for_the_new_urls_pause(settings, receiver):
    """The new URL answered 429 with Retry-After while the old URL's POST was out: that
    POST's failure is due at the new URL when the pause ends, not now, which a claim
    would hold for the pause."""
    release = threading.Event()
    old = receiver.always("/old", rx.held(release, rx.status(500)))
    new = receiver.always("/new", rx.retry_after("3600"))
    partner, key = _registered(settings, old)
    first = insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(service.deliver, first, settings)
        receiver.wait_for(1, "/old")
        _move(settings, key, new)
        newer = insert_notification(partner.partner_id, new,
                                    status=NotificationStatus.PENDING, next_attempt_at=utcnow())
        assert service.deliver(newer, settings).status == NotificationStatus.FAILED
        release.set()
        assert in_flight.result(timeout=30).status == NotificationStatus.FAILED
    paused_until = _endpoint(partner.partner_id, new).retry_after_until
    assert paused_until is not None and paused_until > utcnow()
    assert notification(first).next_attempt_at == paused_until


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "in a batch"])
def test_the_old_urls_2xx_after_a_move_does_not_recover_the_new_url(settings, receiver,
                                                                    alone):
    """A POST to the old URL answers 2xx after PATCH moved the endpoint and the new URL
    failed: it cleared the new URL's failing state and released its queue (the
    counterpart of a failure there, above). The new URL stays failing, its head on the
    ladder."""
    release = threading.Event()
    old = receiver.always("/old", rx.held(release, rx.ok()))
    new = receiver.always("/new", rx.status(500))
    partner, key = _registered(settings, old)
    in_flight = insert_notification(partner.partner_id, old,
                                    status=NotificationStatus.PENDING, next_attempt_at=utcnow())
    with ThreadPoolExecutor(1) as pool:
        if alone:
            done = pool.submit(service.deliver, in_flight, settings)
        else:
            done = pool.submit(batch.deliver_many, [in_flight], settings)
        receiver.wait_for(1, "/old")
        _move(settings, key, new)
        head = insert_notification(partner.partner_id, new,
                                   status=NotificationStatus.PENDING, next_attempt_at=utcnow())
        assert service.deliver(head, settings).status == NotificationStatus.FAILED
        due = notification(head).next_attempt_at
        release.set()
        done.result(timeout=30)
    assert notification(in_flight).status == NotificationStatus.SENT
    endpoint = _endpoint(partner.partner_id, new)
    assert endpoint.failing_since is not None and endpoint.consecutive_failures == 1
    assert notification(head).next_attempt_at == due


@pytest.mark.parametrize("new_answer", ["failing", "gone", "pausing"])
def test_the_old_urls_2xx_after_a_move_hands_the_queue_on(settings, receiver, new_answer):
    """The head, failing at the old URL, is out there again when PATCH moves the endpoint;
    a newer notification fails at the new URL and is held behind it; then the head's 2xx
    comes from the old URL. The new URL stays failing, and the held one takes the head's
    place at once (the new URL's probe): a first fix of the case above left the endpoint
    failing with no head, everything held for good (found by a review, reverted). Unless
    the new URL's 410 disabled the endpoint: then what it holds waits for its enabling;
    or its 429 asked for a pause: then the held one is due when the pause ends (due now,
    a claim held it again for the pause, and nothing probed the new URL)."""
    release = threading.Event()
    old = receiver.program("/old", [rx.status(500)], rx.held(release, rx.ok()))
    new = {"failing": lambda: receiver.fail_then_succeed("/new", 1),
           "gone": lambda: receiver.always("/new", rx.status(410)),
           "pausing": lambda: receiver.always("/new", rx.retry_after("3600"))}[new_answer]()
    partner, key = _registered(settings, old)
    head = insert_notification(partner.partner_id, old, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
    assert service.deliver(head, settings).status == NotificationStatus.FAILED
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(deliver_when_due, head, settings)
        receiver.wait_for(2, "/old")
        _move(settings, key, new)
        newer = insert_notification(partner.partner_id, new,
                                    status=NotificationStatus.PENDING, next_attempt_at=utcnow())
        assert service.deliver(newer, settings).status == NotificationStatus.FAILED
        assert notification(newer).held  # behind the head, still out at the old URL
        release.set()
        assert in_flight.result(timeout=30).status == NotificationStatus.SENT
    assert _endpoint(partner.partner_id, new).failing_since is not None
    if new_answer == "gone":
        assert _endpoint(partner.partner_id, new).disabled_at is not None
        assert notification(newer).held
        return
    if new_answer == "pausing":
        paused_until = _endpoint(partner.partner_id, new).retry_after_until
        promoted = notification(newer)
        assert not promoted.held and promoted.next_attempt_at == paused_until
        assert paused_until is not None and paused_until > utcnow()
        return
    promoted = notification(newer)
    assert not promoted.held and promoted.next_attempt_at <= utcnow()
    assert deliver_when_due(newer, settings).status == NotificationStatus.SENT
    assert len(receiver.requests("/new")) == 2
    assert _endpoint(partner.partner_id, new).failing_since is None


def test_a_batchs_jobs_after_a_move_are_not_sent_to_the_old_url(settings, receiver,
                                                                monkeypatch):
    """A batch's POSTs to one endpoint go a few at a time: those whose turn came after
    PATCH moved the endpoint went to the URL the merchant had left (for up to 26 s in a
    black-box try; the old URL's 2xx recorded them SENT, and the new URL never got
    them). Handed back unsent, they go to the new URL."""
    monkeypatch.setattr(still_there, "CHECK_AFTER", 0.0)  # every turn checked
    monkeypatch.setattr(still_there, "READ_EVERY", 0.0)
    s = settings.with_overrides(endpoint_concurrency=1)  # one run: one POST at a time
    _ids, new, outcome = _moved_mid_post(settings, receiver, rx.ok(), 3,
                                         lambda ids: batch.deliver_many(ids, s))
    assert (outcome.sent, len(outcome.unsent)) == (1, 2)
    assert len(receiver.requests("/old")) == 1
    handed_back = [nid for nid, _lane in outcome.unsent]
    for nid in handed_back:
        row = notification(nid)
        assert (row.status, row.url, row.lease_token, row.attempt_count) == (
            NotificationStatus.PENDING, new, None, 0)
    assert batch.deliver_many(handed_back, s).sent == 2
    assert len(receiver.requests("/new")) == 2


def test_a_late_post_is_checked_against_its_endpoints_url_at_the_claim(settings,
                                                                       monkeypatch):
    """``still_there`` compares the endpoint's URL now with its URL at the claim, not
    with the row's: a row left at a URL its endpoint had left (it was NOT_SENT at the
    move) was handed back at every late turn (the review). A read that fails lets the
    POST go as claimed: raised, it left the batch's answered POSTs unrecorded."""
    monkeypatch.setattr(still_there, "READ_EVERY", 0.0)
    partner = new_partner(settings, None)
    with session_scope() as session:
        endpoint = registered.create(session, settings, partner.partner_id,
                                     url="http://127.0.0.1:9/now")
        key = endpoint.id
    job = DeliveryJob(notification_id="n", lease_token="t", url="http://127.0.0.1:9/left",
                      body=b"{}", secrets=[], trigger=Trigger.AUTOMATIC, endpoint_id=key,
                      endpoint_failing=False, endpoint_url="http://127.0.0.1:9/now")
    late = still_there.StillThere(time.monotonic() - 2 * still_there.CHECK_AFTER, [job])
    assert late(job)  # its endpoint has not moved since the claim
    with session_scope() as session:
        registered.update_endpoint(session, settings, session.get(Endpoint, key),
                                   url="http://127.0.0.1:9/later")
    assert not late(job)
    assert still_there.StillThere(time.monotonic(), [job])(job)  # its turn came at once

    def unreadable(endpoint_id: int, batch: object) -> str | None:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(still_there.ENDPOINTS, "url", unreadable)
    assert late(job)
