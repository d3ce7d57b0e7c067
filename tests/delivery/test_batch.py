"""The batch path: bulk publish, one claim per batch, parallel POSTs, bulk records."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from deliverer import stopping
from deliverer.db import session_scope
from deliverer.delivery import batch
from deliverer.delivery.sending import runs, sender
from deliverer.models import Attempt, Lane, Notification, NotificationStatus, utcnow
from deliverer.publishing.api import publish_events
from deliverer.scheduling.sweep import Due, group_due
from tests.support import receiver as rx
from tests.support.backend import BACKEND
from tests.support.helpers import (
    attempts,
    endpoint_sequences,
    insert_notification,
    new_partner,
    notification,
    wait_until,
)
from tests.support.race import race


def _count(*where) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Notification).where(*where)))


def _assert_handed_back(unsent: list[tuple[str, str]]) -> None:
    """Not sent, nothing recorded, the lease given back: claimable at once."""
    for nid, _ in unsent:
        row = notification(nid)
        assert row.status == NotificationStatus.PENDING and row.attempt_count == 0
        assert row.lease_token is None and row.lease_expires_at is None


def _send_the_rest(unsent: list[tuple[str, str]], settings) -> None:
    """Batch after batch, as the next workers would, until every one was sent."""
    pending = [nid for nid, _ in unsent]
    for _ in range(20):  # bounded
        if not pending:
            break
        pending = [nid for nid, _ in batch.deliver_many(pending, settings).unsent]
    assert not pending


def test_bulk_publish_is_delivered_once_each_with_every_attempt_recorded(
        settings, worker, receiver):
    url = receiver.always("/bulk", rx.ok())
    partner = new_partner(settings, url)
    events = [{"type": "transaction.paid", "reference": f"TXN-{i}", "payload": {"n": i}}
              for i in range(120)]
    published = publish_events(partner.partner_id, events)
    assert [p.sequence for p in published] == list(range(1, 121))
    wait_until(lambda: _count(Notification.status == NotificationStatus.SENT) == 120,
               timeout=60, message="120 deliveries")
    ids = Counter(r.headers["webhook-id"] for r in receiver.requests("/bulk"))
    assert set(ids) == {p.notification_id for p in published}
    assert set(ids.values()) == {1}
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 120
    last, seqs = endpoint_sequences(partner.partner_id, url)
    assert last == 120 and seqs == list(range(1, 121))


def test_a_batch_with_failures_moves_each_failure_onto_the_ladder(settings, receiver):
    ok_url = receiver.always("/fine", rx.ok())
    bad_url = receiver.always("/broken", rx.status(502))
    partner = new_partner(settings, ok_url)
    now = utcnow()
    good = [insert_notification(partner.partner_id, ok_url, status=NotificationStatus.PENDING,
                                next_attempt_at=now)
            for _ in range(5)]
    bad = [insert_notification(partner.partner_id, bad_url, status=NotificationStatus.PENDING,
                               next_attempt_at=now)
           for _ in range(2)]
    outcome = batch.deliver_many(good + bad, settings)
    assert (outcome.sent, outcome.failed) == (5, 2)
    for nid in good:
        row = notification(nid)
        assert row.status == NotificationStatus.SENT and row.attempt_count == 1
        assert row.lease_token is None and row.next_attempt_at is None
    head = notification(bad[0])
    assert head.status == NotificationStatus.FAILED and head.retry_attempts == 1
    assert head.next_attempt_at is not None
    assert head.latest_error_payload["httpStatus"] == 502
    # The second failure on the same endpoint waits behind the first (per-endpoint queue).
    assert notification(bad[1]).held


@pytest.mark.skipif(BACKEND == "embedded", reason="SQLite stores a NUL: PostgreSQL refuses it")
def test_an_outcome_the_database_refuses_holds_no_other(settings, receiver, monkeypatch,
                                                         caplog):
    """Once, a NUL in one receiver's answer made PostgreSQL refuse the batch's transaction:
    none of its outcomes was recorded, and each was POSTed again at every lease expiry."""
    monkeypatch.setattr(sender, "storable", lambda text: text)  # as before it existed
    ok_url = receiver.always("/fine", rx.ok())
    nul_url = receiver.always("/nul", rx.status(500, b"broken\x00"))
    partner = new_partner(settings, ok_url)
    now = utcnow()
    good = [insert_notification(partner.partner_id, ok_url, status=NotificationStatus.PENDING,
                                next_attempt_at=now) for _ in range(3)]
    bad = insert_notification(partner.partner_id, nul_url, status=NotificationStatus.PENDING,
                              next_attempt_at=now)
    with caplog.at_level(logging.ERROR, logger="deliverer.delivery.batch"):
        outcome = batch.deliver_many([*good, bad], settings)
    assert (outcome.sent, outcome.failed) == (3, 1)
    assert all(notification(nid).status == NotificationStatus.SENT for nid in good)
    row = notification(bad)
    assert row.status == NotificationStatus.FAILED and row.attempt_count == 1
    assert row.lease_token is None and row.next_attempt_at is not None  # on the ladder
    [attempt] = attempts(bad)
    assert attempt.response_status == 500 and attempt.response_body is None
    assert attempt.error_payload["message"] == batch.UNSTORABLE
    assert attempt.error_payload["kind"] == "http_status"
    assert "recorded without the answer" in caplog.text


def test_an_endpoint_still_out_does_not_hold_the_others_outcomes(settings, receiver):
    """A batch recorded its outcomes once all its POSTs ended: 21 webhooks of healthy
    merchants, answered at once, showed as unsent for the 15 s a new endpoint that hung
    took to time out, and a worker killed meanwhile would have sent them again. Those
    that end later are recorded in later rounds, each while the hanging one is out."""
    release = threading.Event()
    fast_url = receiver.always("/fast", rx.ok())
    late_url = receiver.always("/late", rx.sleep(1.3, rx.ok()))
    slow_url = receiver.always("/hangs", rx.held(release, rx.ok()))
    now = utcnow()
    fast, late, hung = (
        [insert_notification(new_partner(settings, url, name=name).partner_id, url,
                             status=NotificationStatus.PENDING, next_attempt_at=now)
         for _ in range(count)]
        for url, name, count in ((fast_url, "Fast", 3), (late_url, "Late", 1),
                                 (slow_url, "Hangs", 1)))
    quick = settings.with_overrides(total_timeout=8.0, lease_seconds=20.0)
    outcome: list[batch.BatchOutcome] = []
    thread = threading.Thread(target=lambda: outcome.append(
        batch.deliver_many([*hung, *late, *fast], quick)))
    thread.start()
    try:
        receiver.wait_for(1, "/hangs")
        for ids, message in ((fast, "the fast ones"), (late, "the late one")):
            wait_until(lambda ids=ids: all(notification(n).status == NotificationStatus.SENT
                                           for n in ids),
                       timeout=4.0, message=f"{message} recorded while one is out")
        assert notification(hung[0]).status == NotificationStatus.PENDING
    finally:
        release.set()
        thread.join(15)
    assert (outcome[0].sent, outcome[0].failed) == (5, 0)
    assert notification(hung[0]).status == NotificationStatus.SENT
    assert [len(attempts(n)) for n in [*hung, *late, *fast]] == [1] * 5


def test_racing_batches_post_each_notification_once(settings, receiver):
    url = receiver.always("/race", rx.sleep(0.2))
    partner = new_partner(settings, url)
    now = utcnow()
    ids = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=now) for _ in range(10)]
    race([lambda: batch.deliver_many(ids, settings)] * 4)
    assert Counter(r.headers["webhook-id"] for r in receiver.requests("/race")) == Counter(ids)
    assert _count(Notification.status == NotificationStatus.SENT) == 10


def test_rows_not_yet_due_are_left_alone_and_reported(settings, receiver):
    url = receiver.always("/later", rx.ok())
    partner = new_partner(settings, url)
    later = utcnow() + timedelta(seconds=30)
    nid = insert_notification(partner.partner_id, url, next_attempt_at=later,
                              status=NotificationStatus.FAILED, lane=Lane.RETRY)
    outcome = batch.deliver_many([nid], settings)
    assert outcome.sent == 0 and [n[0] for n in outcome.not_due] == [nid]
    assert receiver.requests("/later") == []


def test_a_batch_starts_no_post_its_lease_could_not_cover(settings, receiver):
    """One endpoint, one POST at a time, each 0.4 s: the batch's later jobs would run past
    the lease. They are handed back unsent (lease released, nothing recorded) and the next
    batch sends them; every webhook goes out once."""
    url = receiver.always("/slowish", rx.sleep(0.4))
    partner = new_partner(settings, url)
    # A lease of 8 s leaves 2.5 s to start POSTs in (runs.send_cutoff): ten 0.4 s POSTs
    # one after the other cannot all start in time, however fast the machine.
    one_at_a_time = settings.with_overrides(endpoint_concurrency=1, lease_seconds=8.0)
    ids = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
           for _ in range(10)]
    started = time.monotonic()
    cutoff = runs.send_cutoff(started, one_at_a_time) - started
    assert 0 < cutoff < (one_at_a_time.lease_seconds - one_at_a_time.total_timeout
                         - one_at_a_time.connect_timeout)

    first = batch.deliver_many(ids, one_at_a_time)
    assert first.unsent
    assert first.sent + len(first.unsent) == 10
    assert {lane for _, lane in first.unsent} == {Lane.FIRST}  # handed back to its queue
    # Only POSTs that started before the cutoff were made.
    assert len(receiver.requests("/slowish")) == first.sent
    assert first.sent <= cutoff / 0.4 + 1
    _assert_handed_back(first.unsent)

    _send_the_rest(first.unsent, one_at_a_time)
    assert Counter(r.headers["webhook-id"] for r in receiver.requests("/slowish")) == Counter(ids)
    assert _count(Notification.status == NotificationStatus.SENT) == 10
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 10


def test_a_worker_re_enqueues_what_a_batch_handed_back(settings, worker, receiver, caplog):
    """Through the task: a bulk publish to a slowish endpoint, more than one lease's worth
    of POSTs per run; the task enqueues the unsent at once, and each goes out once."""
    caplog.set_level(logging.WARNING, logger=batch.__name__)
    url = receiver.always("/slow-bulk", rx.sleep(0.3))
    partner = new_partner(settings, url)
    events = [{"type": "transaction.paid", "reference": f"TXN-{i}", "payload": {"n": i}}
              for i in range(60)]
    published = publish_events(partner.partner_id, events)
    wait_until(lambda: _count(Notification.status == NotificationStatus.SENT) == 60,
               timeout=60, message="60 deliveries")
    ids = Counter(r.headers["webhook-id"] for r in receiver.requests("/slow-bulk"))
    assert ids == Counter(p.notification_id for p in published)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 60
    assert any("handed back unsent" in r.getMessage() for r in caplog.records)


@pytest.fixture
def worker_stopping():
    """``stopping.begin`` as the worker's SIGTERM calls it, undone after the test."""
    yield stopping.begin
    stopping.end()


def test_a_stopping_worker_starts_no_new_post_and_hands_the_rest_back(
        settings, receiver, worker_stopping, caplog):
    """Once the worker is stopping, a batch lets its POST in flight finish and be
    recorded, starts no other, and gives the rest back at once (lease released) for
    another worker: a warm shutdown lasts one POST, not a batch's worth of them."""
    caplog.set_level(logging.WARNING, logger=batch.__name__)
    answer = rx.sleep(0.2)

    def sigterm_during_the_post(handler, receiver_) -> None:
        worker_stopping()  # the SIGTERM arrives while the first POST is in flight
        answer(handler, receiver_)

    url = receiver.always("/stopping", sigterm_during_the_post)
    partner = new_partner(settings, url)
    one_at_a_time = settings.with_overrides(endpoint_concurrency=1)
    ids = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=utcnow())
           for _ in range(6)]
    outcome = batch.deliver_many(ids, one_at_a_time)

    assert outcome.sent == 1  # the POST in flight went out and was recorded
    assert len(receiver.requests("/stopping")) == 1
    assert len(outcome.unsent) == 5
    assert {lane for _, lane in outcome.unsent} == {Lane.FIRST}
    _assert_handed_back(outcome.unsent)
    assert any("worker stopping: 5 of 6 deliveries handed back unsent" in r.getMessage()
               for r in caplog.records)

    stopping.end()  # another worker takes them
    receiver.always("/stopping", answer)
    _send_the_rest(outcome.unsent, one_at_a_time)
    assert Counter(r.headers["webhook-id"] for r in receiver.requests("/stopping")) == \
        Counter(ids)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 6


@pytest.mark.unit
def test_group_due_batches_by_lane_window_and_size():
    t0 = utcnow()
    due = [Due(f"a{i}", Lane.RETRY, t0 + timedelta(milliseconds=i)) for i in range(5)]
    due += [Due("b", Lane.MANUAL, t0), Due("late", Lane.RETRY, t0 + timedelta(seconds=1))]
    groups = group_due(due, max_size=3)
    retry = [g for g in groups if g.lane == Lane.RETRY]
    assert [g.notification_ids for g in retry] == [["a0", "a1", "a2"], ["a3", "a4"], ["late"]]
    # A batch's ETA is its latest member's due time: never early for any of them.
    assert retry[0].eta == t0 + timedelta(milliseconds=2)
    assert [g.notification_ids for g in groups if g.lane == Lane.MANUAL] == [["b"]]
