"""A head's success releases what was held while its POST was in flight.

Found by the chaotic-receiver fault scenario (tests/faults): the head of a failing
endpoint's queue is claimed while the endpoint looks healthy (it has just recovered), a
later notification fails meanwhile (the endpoint is failing again, and that one is held
behind the head), then the head's POST succeeds. Going by the claim-time snapshot, the
success did not recover the endpoint, and the held notification waited forever: FAILED,
no next attempt, never delivered. Both recording paths (one by one, and in batches).
"""

from __future__ import annotations

from datetime import timedelta

from deliverer.db import session_scope
from deliverer.delivery import batch, endpoint_queue, service
from deliverer.delivery.sending.sender import SendResult
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.models import Lane, NotificationStatus, utcnow
from tests.support.helpers import insert_notification, new_partner, notification

URL = "http://127.0.0.1:9/hook"  # never dialled: the POSTs' outcomes are given


def _result(success: bool) -> SendResult:
    if success:
        return SendResult(started_at=utcnow(), duration_ms=1, success=True, status_code=200,
                          body="ok")
    return SendResult(started_at=utcnow(), duration_ms=1, success=False, status_code=500,
                      body="no", error=error_payload(FailureKind.HTTP_STATUS, "HTTP 500", 500))


def _head_in_flight_then_later_fails(settings):
    partner = new_partner(settings, URL)
    due = utcnow() - timedelta(seconds=1)
    # The head: on the ladder of an endpoint that is healthy again (it just recovered).
    head = insert_notification(partner.partner_id, URL, next_attempt_at=due,
                               status=NotificationStatus.FAILED, lane=Lane.RETRY)
    later = insert_notification(partner.partner_id, URL, status=NotificationStatus.PENDING,
                                next_attempt_at=due)
    with session_scope() as session:
        head_job = batch.claim_many(session, [head], settings).jobs[0]
    assert not head_job.endpoint_failing
    # While the head's POST is in flight, the later one fails: held behind the head.
    with session_scope() as session:
        later_job = service.claim(session, later, settings).job
    assert later_job is not None
    with session_scope() as session:
        service.record(session, later_job, _result(False), settings)
    assert notification(later).held
    return head, head_job, later


def _released(later: str, settings) -> bool:
    with session_scope() as session:
        endpoint_queue.drain(session, settings, utcnow())
    row = notification(later)
    return not row.held and row.next_attempt_at is not None


def test_head_success_releases_what_was_held_meanwhile(settings):
    head, head_job, later = _head_in_flight_then_later_fails(settings)
    with session_scope() as session:
        service.record(session, head_job, _result(True), settings)
    assert notification(head).status == NotificationStatus.SENT
    assert _released(later, settings)


def test_batched_head_success_releases_what_was_held_meanwhile(settings):
    head, head_job, later = _head_in_flight_then_later_fails(settings)
    with session_scope() as session:
        batch.record_many(session, [head_job], [_result(True)], settings)
    assert notification(head).status == NotificationStatus.SENT
    assert _released(later, settings)
