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

import deliverer
from deliverer.db import get_database, session_scope
from deliverer.delivery import batch
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sender import SendResult
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.models import NotificationStatus, utcnow
from tests.support.backend import BACKEND
from tests.support.helpers import insert_notification, new_partner, notification
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
