"""The endpoint locks of record transactions (``success.lock_endpoints``).

Record transactions are shared by a worker's threads (``together.py``), so one that
writes a slow endpoint's failure (several statements) also writes other endpoints'
successes. A publish to one of those endpoints UPDATEs its row (sequence number,
wake-up mark): it must not wait for that transaction to end. And record transactions
of one endpoint must not deadlock each other.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

import deliverer
from deliverer.db import get_database, session_scope
from deliverer.delivery import batch
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.recording import success
from deliverer.delivery.sending.sender import SendResult
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.partners import registered
from tests.support.backend import BACKEND
from tests.support.helpers import insert_notification, new_partner, notification, wait_until
from tests.support.race import race

pytestmark = pytest.mark.skipif(BACKEND == "embedded",
                                reason="SQLite has no row locks: every writer waits")

HEALTHY = "http://127.0.0.1:9/healthy"
SLOW = "http://127.0.0.1:9/slow"
BATCHES = 4


def _result(success: bool) -> SendResult:
    if success:
        return SendResult(started_at=utcnow(), duration_ms=1, success=True, status_code=200,
                          body="ok")
    return SendResult(started_at=utcnow(), duration_ms=2000, success=False, status_code=None,
                      body=None, error=error_payload(FailureKind.TIMEOUT, "timed out"))


def test_a_publish_does_not_wait_for_a_shared_record_transaction(settings):
    healthy = new_partner(settings, HEALTHY, name="Healthy")
    slow = new_partner(settings, SLOW, name="Slow")
    due = utcnow() - timedelta(seconds=1)
    ids = [insert_notification(p.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=due)
           for p, url in ((healthy, HEALTHY), (slow, SLOW))]
    session = get_database().sessionmaker()
    try:
        jobs = batch.claim_many(session, ids, settings).jobs
        session.commit()
        by_url = {job.url: job for job in jobs}
        # The shared record transaction: the healthy endpoint's success, the slow one's
        # failure; still open.
        batch.record_many(session, [by_url[HEALTHY], by_url[SLOW]],
                          [_result(True), _result(False)], settings)
        took: list[float] = []

        def publish() -> None:
            began = time.monotonic()
            deliverer.publish_event(healthy.partner_id, "transaction.paid", "r1", {"n": 1})
            took.append(time.monotonic() - began)

        publisher = threading.Thread(target=publish)
        publisher.start()
        publisher.join(timeout=3.0)
        waited = publisher.is_alive()
        session.commit()
    finally:
        session.close()
    publisher.join(timeout=10.0)
    assert not waited, "the publish waited for the record transaction"
    assert took


def test_shared_record_transactions_of_one_endpoint_do_not_deadlock(settings):
    """Each records a success and a failure of the same endpoint, all at once. Locked
    weak for the success, then strongly for the failure, two of them deadlocked: each
    held FOR KEY SHARE and waited for the other's to end (the beat fault test saw record
    transactions aborted so until their retries ran out, and webhooks sent twice)."""
    due = utcnow() - timedelta(seconds=1)
    for round_ in range(3):  # each on an endpoint of its own, healthy when claimed
        partner = new_partner(settings, HEALTHY, name=f"Shop {round_}")
        ids = [insert_notification(partner.partner_id, HEALTHY,
                                   status=NotificationStatus.PENDING, next_attempt_at=due)
               for _ in range(2 * BATCHES)]
        with session_scope() as session:
            jobs = batch.claim_many(session, ids, settings).jobs
        assert len(jobs) == len(ids) and not any(job.endpoint_failing for job in jobs)

        def record(pair: list[DeliveryJob]):
            # No retry: a deadlock victim fails the test.
            def call() -> None:
                with session_scope() as session:
                    batch.record_many(session, pair, [_result(True), _result(False)],
                                      settings)
            return call

        race([record(jobs[k:k + 2]) for k in range(0, len(jobs), 2)])
        recorded = [notification(nid) for nid in ids]
        assert sorted(row.status for row in recorded) == sorted(
            [NotificationStatus.SENT] * BATCHES + [NotificationStatus.FAILED] * BATCHES)


def _deadlocks() -> int:
    with session_scope() as session:
        session.execute(text("SELECT pg_stat_clear_snapshot()"))
        return session.scalar(text("SELECT deadlocks FROM pg_stat_database "
                                   "WHERE datname = current_database()"))


def test_a_success_on_an_endpoint_failing_since_its_claim_does_not_deadlock_a_publish(
        settings):
    """A record transaction holds a success's endpoint A (healthy when claimed) and a
    failure's B. A failure recorded meanwhile made A failing, so the success recovers
    it: an UPDATE of A. Locked FOR KEY SHARE, that was an upgrade: a publish to A and B
    took A FOR NO KEY UPDATE and waited for B, and the upgrade waited for the publish
    (58 deadlocks in the operator try, 20 publishes answered 503)."""
    partner = new_partner(settings, HEALTHY, name="Fan-out")
    with session_scope() as session:
        registered.create(session, settings, partner.partner_id, url=SLOW)
    due = utcnow() - timedelta(seconds=1)
    ids = [insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                               next_attempt_at=due) for url in (HEALTHY, SLOW)]
    with session_scope() as session:
        jobs = {job.url: job for job in batch.claim_many(session, ids, settings).jobs}
        assert not any(job.endpoint_failing for job in jobs.values())
        # The failure recorded meanwhile, by another transaction.
        session.execute(update(Endpoint).where(Endpoint.url == HEALTHY)
                        .values(failing_since=utcnow(), consecutive_failures=1))
    before = _deadlocks()
    done = [(jobs[HEALTHY], _result(True)), (jobs[SLOW], _result(False))]
    session = get_database().sessionmaker()
    published: list[str] = []
    try:
        failing = success.lock_endpoints(session, done)
        publisher = threading.Thread(target=lambda: published.append(
            deliverer.publish_event(partner.partner_id, "transaction.paid", "r1", {}
                                    ).event_id))
        publisher.start()
        # The publish waits for one of the endpoints (A now, B before the fix).
        wait_until(lambda: _waiting_for_a_lock() >= 1, timeout=5,
                   message="the publish waits for an endpoint")
        success.record_successes(session, done[:1], utcnow(), failing)
        session.commit()
    finally:
        session.close()
    publisher.join(timeout=15.0)
    assert published, "the publish did not end"
    # Counted when the victim's backend reports its statistics (within a second or so).
    deadline = time.monotonic() + 1.5
    while _deadlocks() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _deadlocks() == before
    recovered = notification(ids[0])
    assert recovered.status == NotificationStatus.SENT
    with session_scope() as session:  # recovered (a worker may fail it again since)
        assert session.scalar(select(Endpoint.last_success_at)
                              .where(Endpoint.url == HEALTHY)) is not None


def _waiting_for_a_lock() -> int:
    with session_scope() as session:
        return session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"))
