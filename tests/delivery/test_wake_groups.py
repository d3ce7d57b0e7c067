"""Group wake-ups (PostgreSQL): a single publish to a healthy endpoint wakes the
endpoint's group only when no wake-up is pending for it, and the group's claim takes its
marked endpoints, a shared batch at a time."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import kombu.exceptions
import pytest
from sqlalchemy import select, text, update

import deliverer
from deliverer.broker import dispatch
from deliverer.db import session_scope
from deliverer.delivery.wakeups import wake_groups
from deliverer.delivery.wakeups.wake_groups import group_of
from deliverer.models import WAKE_GROUPS, Endpoint, NotificationStatus, WakeGroup, utcnow
from deliverer.publishing import one_statement, service
from deliverer.publishing.service import record_event as publish_event
from tests.support import helpers as h
from tests.support.messages import WAKE_UPS
from tests.support.receiver import ok
from tests.support.wakeups import race_publishes, wake_ups

pytestmark = pytest.mark.skipif(not WAKE_UPS, reason="SQLite sends a message per notification")


def _in_one_group(settings, receiver, count: int) -> tuple[int, list[tuple[str, str, int]]]:  # type: ignore[no-untyped-def]
    """``count`` partners whose default endpoints share a wake-up group: (group, [(partner
    id, url, endpoint id)]). The id sequence is moved on so that each new endpoint's id
    falls in the first one's group."""
    made: list[tuple[str, str, int]] = []
    for k in range(count):
        if made:
            with session_scope() as session:
                last = session.scalar(text("SELECT last_value FROM endpoints_id_seq"))
                session.execute(text("SELECT setval('endpoints_id_seq', :v)"),
                                {"v": last + WAKE_GROUPS - 1})
        url = receiver.url(f"/group{k}")
        receiver.always(f"/group{k}", ok())
        shop = h.new_partner(settings, url)
        with session_scope() as session:
            endpoint_id = session.scalar(select(Endpoint.id).where(
                Endpoint.partner_id == shop.partner_id))
        made.append((shop.partner_id, url, endpoint_id))
    group = group_of(made[0][2])
    assert all(group_of(endpoint_id) == group for _p, _u, endpoint_id in made)
    return group, made


def _marks(*endpoint_ids: int) -> list[bool]:
    with session_scope() as session:
        return [session.scalar(select(Endpoint.wake_sent_at).where(Endpoint.id == e))
                is not None for e in endpoint_ids]


def _by_group(*endpoint_ids: int) -> list[bool]:
    with session_scope() as session:
        return [session.scalar(select(Endpoint.wake_by_group).where(Endpoint.id == e))
                for e in endpoint_ids]


def _group_mark(group: int):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return session.scalar(select(WakeGroup.wake_sent_at).where(WakeGroup.id == group))


def _set_group_mark(group: int, value) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        session.execute(text(
            "INSERT INTO wake_groups (id, wake_sent_at) VALUES (:g, :v) "
            "ON CONFLICT (id) DO UPDATE SET wake_sent_at = :v"), {"g": group, "v": value})


def test_publishes_to_endpoints_of_one_group_send_one_wake_up(settings, receiver,
                                                              monkeypatch):
    sent: list[tuple[int, list[int]]] = []

    def enqueue_group_wake(group_id: int, endpoint_ids=(), notification_ids=()) -> bool:  # type: ignore[no-untyped-def]
        sent.append((group_id, list(endpoint_ids)))  # kept from the session's worker
        return True

    monkeypatch.setattr(one_statement, "enqueue_group_wake", enqueue_group_wake)
    group, shops = _in_one_group(settings, receiver, 3)
    published = [deliverer.publish_event(partner_id, "t", "r", {}).notification_id
                 for partner_id, _url, _e in shops]
    # The first publish woke the group; the others found its wake-up pending.
    assert sent == [(group, [shops[0][2]])]
    assert _marks(*(e for _p, _u, e in shops)) == [True, True, True]
    assert _by_group(*(e for _p, _u, e in shops)) == [True, True, True]
    assert _group_mark(group) is not None
    outcome = wake_groups.deliver_group(group, settings)
    assert outcome.sent == 3
    assert all(h.sent(nid) for nid in published)
    for k in range(3):
        assert len(receiver.requests(f"/group{k}")) == 1
    assert _marks(*(e for _p, _u, e in shops)) == [False, False, False]
    assert _group_mark(group) is None


def test_a_failing_endpoint_keeps_a_wake_up_of_its_own(settings, receiver, published_tasks):
    _group, [(partner_id, _url, endpoint_id)] = _in_one_group(settings, receiver, 1)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoint_id)
                        .values(failing_since=utcnow()))
    deliverer.publish_event(partner_id, "t", "r", {})
    assert wake_ups(published_tasks) == [(dispatch.DELIVER_DUE, endpoint_id)]
    assert _by_group(endpoint_id) == [False]


def test_a_group_claim_shares_a_batch_and_passes_on_while_some_remain(
        settings, receiver, override_settings):
    group, shops = _in_one_group(settings, receiver, 5)
    now = utcnow()
    due = {e: [h.insert_notification(p, url, status=NotificationStatus.PENDING,
                                     next_attempt_at=now) for _ in range(n)]
           for (p, url, e), n in zip(shops[:3], (1, 3, 4), strict=True)}
    # Two failing endpoints: one whose mark stands for the group's wake-up (set when it
    # was healthy, or by a group's claim: the mark may be later than its failing_since,
    # a record's clock), one whose mark stands for its own pending wake-up.
    dying = {e: h.insert_notification(p, url, status=NotificationStatus.PENDING,
                                      next_attempt_at=now) for p, url, e in shops[3:]}
    woke_group, own = shops[3][2], shops[4][2]
    for endpoint_id in (*due, woke_group, own):
        with session_scope() as session:
            session.execute(update(Endpoint).where(Endpoint.id == endpoint_id).values(
                wake_sent_at=now, wake_by_group=endpoint_id != own,
                failing_since=now - timedelta(seconds=1) if endpoint_id in dying else None))
    taken: list[str] = []
    rounds = 0
    with override_settings(delivery_batch_size=3) as small:
        more = True
        while more:
            rounds += 1
            assert rounds <= 10
            _set_group_mark(group, utcnow())  # the wake-up being taken
            with session_scope() as session:
                claims, handed = wake_groups.claim_groups(session, [group], small)
            claim, more = claims[group]
            assert len(claim.jobs) <= 3  # a batch shared by the group's endpoints
            taken += [job.notification_id for job in claim.jobs]
            assert (_group_mark(group) is not None) is more
            if rounds == 1:
                # Three endpoints, a third of a batch each; the failing one the group
                # woke handed a wake-up of its own, its mark cleared; none of either
                # failing one's rows leased.
                assert sorted(job.endpoint_id for job in claim.jobs) == sorted(due)
                assert handed == [woke_group]
                assert _marks(*due, woke_group, own) == [False, True, True, False, True]
                # Set again for the group's wake-up, passed on: failing next time, they
                # would be handed off, whatever their clocks.
                assert _by_group(*list(due)[1:]) == [True, True]
            else:
                assert handed == []
    assert sorted(taken) == sorted(nid for ids in due.values() for nid in ids)
    assert _marks(*due, woke_group, own) == [False, False, False, False, True]
    assert all(h.notification(nid).lease_token is None for nid in dying.values())


def test_an_endpoint_held_by_another_transaction_is_left_to_the_next_claim(settings,
                                                                           receiver):
    """A claim holds its group's row: it never waits for an endpoint (a publish holding
    one waits for the group's row next), it skips it and passes the wake-up on."""
    group, [(partner_id, url, endpoint_id)] = _in_one_group(settings, receiver, 1)
    nid = h.insert_notification(partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoint_id)
                        .values(wake_sent_at=utcnow()))
    _set_group_mark(group, utcnow())
    with session_scope() as holding:
        holding.execute(update(Endpoint).where(Endpoint.id == endpoint_id)
                        .values(last_sequence=Endpoint.last_sequence))
        with session_scope() as session:
            claims, _handed = wake_groups.claim_groups(session, [group], settings)
        claim, more = claims[group]
        assert claim.jobs == [] and more
    assert _marks(endpoint_id) == [True] and _group_mark(group) is not None
    with session_scope() as session:
        claims, _handed = wake_groups.claim_groups(session, [group], settings)
    assert [job.notification_id for job in claims[group][0].jobs] == [nid]
    assert not claims[group][1]


def test_a_group_claim_waits_for_a_publish_that_marked_the_group(settings, receiver,
                                                                  monkeypatch):
    """A publish that marks an endpoint holds its group's row (the statement's UPDATE of
    it) until it commits; the claim's clearing waits for it, then the claim finds the
    endpoint and takes the notification, though it was made after the claim began. (The
    one statement cannot be paused between its UPDATEs: a transaction stands in.)"""
    group, [(partner_id, _url, endpoint_id)] = _in_one_group(settings, receiver, 1)
    _set_group_mark(group, utcnow())  # pending: the claim is that wake-up's
    # The publish below (in a producer's transaction) sends the endpoint's own wake-up:
    # kept from the session's worker, which would take the notification first.
    monkeypatch.setattr(service, "enqueue_wake", lambda *args: True)
    taken: list[tuple[object, bool]] = []

    def claim() -> None:
        taken.extend(wake_groups._claim_together([group]))

    with session_scope() as publishing:
        publishing.execute(update(WakeGroup).where(WakeGroup.id == group)
                           .values(wake_sent_at=WakeGroup.wake_sent_at))  # held from here
        claiming = threading.Thread(target=claim)
        claiming.start()
        time.sleep(0.3)
        assert claiming.is_alive()  # waiting for the group's row
        published = publish_event(publishing, settings, partner_id=partner_id,
                                  type="t", reference="held", payload={})
        assert _marks(endpoint_id) == [False]  # not committed yet
    claiming.join(10)
    [(batch, more)] = taken
    assert [job.notification_id for job in batch.jobs] == [published.notification_id]
    assert not more


def test_no_publish_is_lost_or_sent_twice_when_a_group_is_claimed_meanwhile(
        settings, receiver, published_tasks, override_settings):
    """Publishes to three endpoints of one group race with the group's wake-ups, taken
    here by hand as they are sent, in batches of two: each notification is delivered
    once."""
    group, shops = _in_one_group(settings, receiver, 3)
    with override_settings(delivery_batch_size=2) as small:
        published = race_publishes(published_tasks, small, [p for p, _u, _e in shops])
    assert set(wake_ups(published_tasks)) == {(dispatch.DELIVER_GROUP, group)}
    assert len(published) == 60
    h.wait_until(lambda: all(h.sent(nid) for nid in published), 10,
                 message="every notification delivered")
    assert sum(len(receiver.requests(f"/group{k}")) for k in range(3)) == 60


def test_a_stale_group_mark_is_taken_as_lost(settings, receiver, published_tasks):
    group, [(partner_id, _url, _e)] = _in_one_group(settings, receiver, 1)
    _set_group_mark(group, utcnow())
    deliverer.publish_event(partner_id, "t", "r0", {})
    assert wake_ups(published_tasks) == []  # the group's wake-up is pending
    _set_group_mark(group, utcnow() - timedelta(seconds=30))
    with session_scope() as session:  # and the endpoint's mark taken as lost too
        session.execute(update(Endpoint).where(Endpoint.partner_id == partner_id)
                        .values(wake_sent_at=None))
    deliverer.publish_event(partner_id, "t", "r1", {})
    assert wake_ups(published_tasks) == [(dispatch.DELIVER_GROUP, group)]


def test_publishes_to_one_group_with_workers_are_each_delivered_once(settings, receiver,
                                                                     worker):
    """The real path: three producers publish to three endpoints of one group while
    the session's worker takes the group's wake-ups, its threads claiming at once."""
    _group, shops = _in_one_group(settings, receiver, 3)
    published: list[str] = []
    lock = threading.Lock()

    def produce(partner_id: str) -> None:
        for i in range(40):
            nid = deliverer.publish_event(partner_id, "t", f"r{i}", {}).notification_id
            with lock:
                published.append(nid)

    producers = [threading.Thread(target=produce, args=(p,)) for p, _u, _e in shops]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join(30)
    assert len(published) == 120
    h.wait_until(lambda: all(h.sent(nid) for nid in published), 30,
                 message="every notification delivered")
    for k in range(3):
        assert len(receiver.requests(f"/group{k}")) == 40


def test_a_group_wake_up_the_broker_refuses_clears_every_mark_of_the_group(
        settings, receiver, monkeypatch):
    """No wake-up is pending then: the group's mark and those of all its marked
    endpoints (the publish's, and others that relied on the group's wake-up) are
    cleared, so the next publish sends one; the notification is left to the sweep."""
    group, shops = _in_one_group(settings, receiver, 2)
    (partner_id, url, first), (_p, _u, second) = shops
    nid = h.insert_notification(partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow(), scheduled_for=utcnow())
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id.in_([first, second]))
                        .values(wake_sent_at=utcnow(), wake_by_group=True))
    _set_group_mark(group, utcnow())

    def refused(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise kombu.exceptions.OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(dispatch, "_send", refused)
    assert dispatch.enqueue_group_wake(group, [first], [nid]) is False
    assert _marks(first, second) == [False, False]
    assert _group_mark(group) is None
    assert h.notification(nid).scheduled_for is None
