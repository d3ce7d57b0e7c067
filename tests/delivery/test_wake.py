"""Wake-ups (PostgreSQL): a publish wakes its endpoint (or its group) only when no
wake-up is pending, and the woken task claims the endpoint's due first attempts a batch
at a time."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

import deliverer
from deliverer.broker import dispatch
from deliverer.db import session_scope
from deliverer.delivery.wakeups import wake, wakes_together
from deliverer.delivery.wakeups.wake_groups import group_of
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.publishing.service import record_event as publish_event
from tests.support import helpers as h
from tests.support.messages import WAKE_UPS
from tests.support.receiver import ok
from tests.support.waiting import wait_until
from tests.support.wakeups import race_publishes, wake_ups

pytestmark = pytest.mark.skipif(not WAKE_UPS, reason="SQLite sends a message per notification")


def _mark(endpoint_id: int, value) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoint_id)
                        .values(wake_sent_at=value))


def _mark_of(endpoint_id: int):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return session.scalar(select(Endpoint.wake_sent_at).where(Endpoint.id == endpoint_id))


def test_a_publish_sends_a_wake_up_only_when_none_is_pending(settings, receiver,
                                                             published_tasks):
    shop = h.new_partner(settings, receiver.url("/hook"))
    with session_scope() as session:  # its default endpoint, made with the partner
        endpoint_id = session.scalar(select(Endpoint.id).where(
            Endpoint.partner_id == shop.partner_id))
    # Pending: no wake-up message exists for the session's worker (if one runs) to take.
    _mark(endpoint_id, utcnow())
    for i in range(3):
        deliverer.publish_event(shop.partner_id, "t", f"r{i}", {})
    assert wake_ups(published_tasks) == []

    _mark(endpoint_id, utcnow() - wake.WAKE_TTL - timedelta(seconds=1))  # taken as lost
    deliverer.publish_event(shop.partner_id, "t", "r3", {})
    # A single publish to a healthy endpoint wakes its group (wake_groups.py).
    assert wake_ups(published_tasks) == [(dispatch.DELIVER_GROUP, group_of(endpoint_id))]


def test_the_woken_task_claims_a_batch_and_keeps_the_mark_while_some_remain(
        settings, receiver, override_settings):
    url = receiver.url("/hook")
    shop = h.new_partner(settings, url)
    now = utcnow()
    due = [h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=now) for _ in range(5)]
    later = h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                  next_attempt_at=now + timedelta(hours=1))
    retry = h.insert_notification(shop.partner_id, url, status=NotificationStatus.FAILED,
                                  next_attempt_at=now)
    endpoint_id = h.notification(due[0]).endpoint_id
    _mark(endpoint_id, now)
    taken: list[str] = []
    with override_settings(delivery_batch_size=2) as small:
        for expected_more in (True, True, False):
            with session_scope() as session:
                claim, more = wake.claim_due(session, endpoint_id, small)
            taken += [job.notification_id for job in claim.jobs]
            assert more is expected_more
            assert (_mark_of(endpoint_id) is not None) is expected_more
            with session_scope() as session:  # set again for its own wake-up
                assert session.scalar(select(Endpoint.wake_by_group)
                                      .where(Endpoint.id == endpoint_id)) is False
    assert sorted(taken) == sorted(due)
    assert h.notification(later).lease_token is None  # not due yet
    assert h.notification(retry).lease_token is None  # a retry: its own message


def _default_endpoint(shop) -> int:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        endpoint_id: int = session.scalar(select(Endpoint.id).where(
            Endpoint.partner_id == shop.partner_id))
    return endpoint_id


def test_a_claim_that_waited_for_a_publish_takes_its_notification(settings, receiver):
    """A publish holds its endpoint's row (sequence number, mark) when a wake-up's claim
    clears the mark: the claim waits for it, then takes the notification it made, though
    that was made after the claim began. (The claim once read its clock before waiting:
    by it the notification was not due yet, and it stayed PENDING, its mark cleared.)"""
    shop = h.new_partner(settings, receiver.url("/held"))
    endpoint_id = _default_endpoint(shop)
    _mark(endpoint_id, utcnow())  # a wake-up pending: the publish sends none
    taken: list[tuple[object, bool]] = []

    def claim() -> None:
        with session_scope() as session:
            taken.append(wake.claim_due(session, endpoint_id, settings))

    with session_scope() as publishing:
        publishing.execute(update(Endpoint).where(Endpoint.id == endpoint_id)
                           .values(last_sequence=Endpoint.last_sequence))  # held from here
        claiming = threading.Thread(target=claim)
        claiming.start()
        time.sleep(0.3)
        assert claiming.is_alive()  # waiting for the row
        published = publish_event(publishing, settings, partner_id=shop.partner_id,
                                  type="t", reference="held", payload={})
    claiming.join(10)
    [(batch, more)] = taken
    assert [job.notification_id for job in batch.jobs] == [published.notification_id]
    assert not more


def test_a_claim_that_fails_leaves_the_mark_cleared(settings, receiver, monkeypatch):
    """The claim's rollback undoes its clearing: the mark is cleared again on its own, so
    the next publish sends a wake-up rather than trusting one that was taken."""
    shop = h.new_partner(settings, receiver.url("/broken"))
    endpoint_id = _default_endpoint(shop)
    _mark(endpoint_id, utcnow())

    def broken(session, *args, **kwargs):  # type: ignore[no-untyped-def]
        session.execute(wake.CLEAR_MARKS, {"ids": [endpoint_id]})
        raise RuntimeError("claim failed")

    monkeypatch.setattr(wakes_together, "claim_due_many", broken)
    with pytest.raises(RuntimeError, match="claim failed"):
        wakes_together._claim_together([endpoint_id])
    assert _mark_of(endpoint_id) is None


def test_no_publish_is_left_without_a_wake_up_by_a_concurrent_claim(settings, receiver,
                                                                    published_tasks,
                                                                    override_settings):
    """Publishes race with woken tasks taking batches of two; every wake-up sent is taken
    (here, by hand: the broker's message is not needed). If a publish ever found a mark
    that a claim was about to clear, its notification would stay PENDING."""
    receiver.always("/race", ok())
    url = receiver.url("/race")
    shop = h.new_partner(settings, url)
    with override_settings(delivery_batch_size=2) as small:
        published = race_publishes(published_tasks, small, [shop.partner_id])
    assert len(published) == 60
    h.wait_until(lambda: all(h.sent(nid) for nid in published), 10,
                 message="every notification delivered")
    assert len(receiver.requests("/race")) == 60


def _endpoint_with_due(settings, receiver, path: str, count: int,  # type: ignore[no-untyped-def]
                       due: datetime | None = None):
    url = receiver.url(path)
    shop = h.new_partner(settings, url)
    ids = [h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=due or utcnow()) for _ in range(count)]
    return h.notification(ids[0]).endpoint_id, ids


def test_behind_a_backlog_a_batch_is_filled_from_endpoints_whose_wake_ups_wait(
        settings, receiver, override_settings, monkeypatch):
    # A backlog age no pause of a loaded machine reaches: "recent" stays recent.
    monkeypatch.setattr(wake, "BACKLOG_AGE", timedelta(minutes=10))
    now = utcnow()
    old = now - wake.BACKLOG_AGE - timedelta(seconds=1)
    # Its own rows waited behind the backlog too.
    woken, own = _endpoint_with_due(settings, receiver, "/own", 2, due=old)
    waiting, theirs = _endpoint_with_due(settings, receiver, "/waiting", 3)
    recent, fresh = _endpoint_with_due(settings, receiver, "/recent", 3)
    failing, dying = _endpoint_with_due(settings, receiver, "/failing", 3)
    for endpoint_id, sent_at in ((waiting, old), (recent, now), (failing, old)):
        _mark(endpoint_id, sent_at)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == failing)
                        .values(failing_since=old))
    with override_settings(delivery_batch_size=4) as small, session_scope() as session:
        claim, more = wake.claim_due(session, woken, small)
    taken = [job.notification_id for job in claim.jobs]
    # Its own first, then the longest-waiting endpoint's oldest, up to a batch of four;
    # none of an endpoint whose wake-up was just sent (no backlog) or that is failing.
    # (The jobs come in no particular order: compare as sets.)
    assert set(own) <= set(taken) and len(taken) == 4
    assert set(taken) - set(own) <= set(theirs)
    assert not more
    assert all(h.notification(nid).lease_token is None for nid in fresh + dying)
    # The borrowed endpoint keeps its mark: its own wake-up comes and takes the rest.
    assert _mark_of(waiting) is not None
    with session_scope() as session:
        rest, _ = wake.claim_due(session, waiting, small)
    assert [job.notification_id for job in rest.jobs] == [
        nid for nid in theirs if nid not in taken]


def test_nothing_is_borrowed_without_a_backlog(settings, receiver, monkeypatch):
    monkeypatch.setattr(wake, "BACKLOG_AGE", timedelta(minutes=10))
    # Its own row waited (so it looks): what decides is the other endpoint's wait.
    woken, own = _endpoint_with_due(
        settings, receiver, "/own", 1,
        due=utcnow() - wake.BACKLOG_AGE - timedelta(seconds=1))
    waiting, _theirs = _endpoint_with_due(settings, receiver, "/waiting", 2)
    _mark(waiting, utcnow())  # sent a moment ago: taken in milliseconds on an idle worker
    with session_scope() as session:
        claim, _ = wake.claim_due(session, woken, settings)
    assert [job.notification_id for job in claim.jobs] == own


def test_a_wake_up_whose_own_rows_did_not_wait_borrows_nothing(settings, receiver,
                                                               monkeypatch):
    # At a steady rate a lone row is claimed milliseconds after its publish: no backlog,
    # whatever other endpoints wait for (their own wake-ups come), and no statement spent
    # looking for one.
    monkeypatch.setattr(wake, "BACKLOG_AGE", timedelta(minutes=10))
    woken, own = _endpoint_with_due(settings, receiver, "/own", 1)
    waiting, _theirs = _endpoint_with_due(settings, receiver, "/waiting", 2)
    _mark(waiting, utcnow() - wake.BACKLOG_AGE - timedelta(seconds=1))
    called: list[object] = []
    monkeypatch.setattr(wake, "_steal", lambda *args: called.append(args) or {})
    with session_scope() as session:
        claim, _ = wake.claim_due(session, woken, settings)
    assert [job.notification_id for job in claim.jobs] == own
    assert called == []


def test_no_publish_is_lost_or_sent_twice_when_wake_ups_borrow(settings, receiver,
                                                               published_tasks,
                                                               override_settings,
                                                               monkeypatch):
    """Publishes to three endpoints race with wake-ups that borrow from each other at
    once (no backlog age): each notification is delivered once."""
    monkeypatch.setattr(wake, "BACKLOG_AGE", timedelta(0))
    borrowed: list[str] = []
    steal = wake._steal

    def counted(*args):  # type: ignore[no-untyped-def]
        carried = steal(*args)
        borrowed.extend(carried)
        return carried

    monkeypatch.setattr(wake, "_steal", counted)
    shops = [h.new_partner(settings, receiver.url(f"/borrow{k}")) for k in range(3)]
    for k in range(3):
        receiver.always(f"/borrow{k}", ok())
    with override_settings(delivery_batch_size=3) as small:
        published = race_publishes(published_tasks, small, [shop.partner_id for shop in shops])
    assert len(published) == 60
    h.wait_until(lambda: all(h.sent(nid) for nid in published), 10,
                 message="every notification delivered")
    assert sum(len(receiver.requests(f"/borrow{k}")) for k in range(3)) == 60
    assert borrowed  # the race did borrow


def test_first_attempts_published_by_a_clock_ahead_get_their_own_message(settings, receiver):
    """A producer on another machine whose clock runs ahead makes its first attempts due
    a little later by the worker's clock. The wake-up finds them not due yet: each gets a
    message due when it is (once, not once per wake-up), so that it is sent then and not
    after the sweep's lost-message grace. A row paced back to a later slot (enqueued
    before it is due) already has its message and is not among them."""
    url = receiver.url("/ahead")
    shop = h.new_partner(settings, url)
    endpoint_id = _default_endpoint(shop)
    now = utcnow()
    ahead = now + wake.CLOCK_SKEW / 2
    early = h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                  next_attempt_at=ahead, scheduled_for=ahead,
                                  enqueued_at=ahead)
    h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                          next_attempt_at=ahead, scheduled_for=ahead, enqueued_at=now)
    h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                          next_attempt_at=now + wake.CLOCK_SKEW + timedelta(seconds=5),
                          enqueued_at=now + wake.CLOCK_SKEW + timedelta(seconds=5))
    for expected in ([(early, ahead)], []):
        _mark(endpoint_id, utcnow())
        with session_scope() as session:
            claim, more = wake.claim_due(session, endpoint_id, settings)
        assert claim.jobs == [] and not more
        assert [(nid, due) for nid, _lane, due in claim.not_due] == expected
        assert _mark_of(endpoint_id) is None


def test_a_publish_by_a_clock_ahead_is_delivered_when_due(settings, receiver, worker,
                                                          monkeypatch):
    """End to end, with a worker: the publisher's clock 1.5 s ahead of the worker's."""
    from deliverer.publishing import one_statement

    shop = h.new_partner(settings, receiver.url("/skewed"))
    monkeypatch.setattr(one_statement, "utcnow", lambda: utcnow() + timedelta(seconds=1.5))
    started = time.monotonic()
    published = deliverer.publish_event(shop.partner_id, "t", "ahead", {})
    receiver.wait_for(1, "/skewed", timeout=15)
    assert time.monotonic() - started >= 1.0  # not before it was due
    wait_until(lambda: h.notification(published.notification_id).status
               == NotificationStatus.SENT)
    assert len(receiver.requests("/skewed")) == 1
