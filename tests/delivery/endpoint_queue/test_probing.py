"""How a failing endpoint's queue moves: probed by one notification at a time (its earliest),
drained in order at a bounded rate once it recovers, and paused as a whole by a
Retry-After. Driven through the real service and sender against a real loopback receiver;
the worker is not needed for these."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from deliverer.db import session_scope
from deliverer.delivery import endpoint_queue, service
from deliverer.models import Lane, Notification, NotificationStatus, utcnow
from deliverer.retry_ladder import Ladder
from deliverer.scheduling.sweep import collect_due
from tests.delivery.endpoint_queue.helpers import endpoint_at
from tests.support import receiver as rx
from tests.support.helpers import deliver_when_due, insert_notification, new_partner, notification
from tests.support.waiting import wait_until


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
    assert endpoint_at(shop.partner_id, url).draining
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
        assert endpoint_at(partner.partner_id, url).draining
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
        endpoint_id = endpoint_at(partner.partner_id, url).id
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


def test_a_retry_after_pauses_the_endpoint_not_only_its_head(settings, receiver,
                                                             override_settings):
    """A 429 "Retry-After: 1500" (1.5 s scaled) was honoured for the notification that got
    it, while every fresh one was POSTed at once into the pause (a black-box try)."""
    url = receiver.program("/busy", [rx.retry_after("1500", 429)], rx.ok())
    partner = new_partner(settings, url)
    head = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
    assert service.deliver(head, settings).status == NotificationStatus.FAILED
    until = endpoint_at(partner.partner_id, url).retry_after_until
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
    assert endpoint_at(partner.partner_id, url).retry_after_until > utcnow()  # paused
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
