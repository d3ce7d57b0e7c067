"""Recording an attempt: the attempt row and the notification's new state in one
transaction, by the holder of its lease, once its endpoint is locked
(``success.lock_endpoints``). Plain successes go in bulk (``success``); failures move
the ladder, the endpoint's queue and its alerts (``failure``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery.claim import ClaimState, DeliveryJob
from deliverer.delivery.recording.failure import record_failure
from deliverer.delivery.recording.outcome import AttemptOutcome
from deliverer.delivery.recording.success import (
    attempt_row,
    count_lost,
    is_plain_success,
    lock_endpoints,
    record_successes,
    recover,
    sent_values,
)
from deliverer.delivery.sending import sender
from deliverer.models import Attempt, Endpoint, Notification, NotificationStatus, utcnow

log = logging.getLogger(__name__)


def log_attempt(notification_id: str, result: sender.SendResult) -> None:
    """One line per attempt, once recorded (single and batch deliveries alike)."""
    log.info("attempt %s: %s", "delivered" if result.success else "failed",
             json.dumps(result.error) if result.error else result.status_code,
             extra={"notification_id": notification_id})


def record(session: Session, job: DeliveryJob, result: sender.SendResult, settings: Settings,
           now: datetime | None = None) -> AttemptOutcome:
    """Lock the job's endpoint, write the attempt and move the notification on. Commits
    nothing."""
    failing = lock_endpoints(session, [(job, result)])
    return record_locked(session, job, result, settings, now or utcnow(), failing)


def record_locked(session: Session, job: DeliveryJob, result: sender.SendResult,
                  settings: Settings, now: datetime, failing: Collection[int]
                  ) -> AttemptOutcome:
    """``record``, the job's endpoint locked by the caller (``lock_endpoints``, which
    returned ``failing``). Commits nothing."""
    if is_plain_success(job, result):
        if record_successes(session, [(job, result)], now, failing) == 1:
            return AttemptOutcome(ClaimState.CLAIMED, status=NotificationStatus.SENT)
        log.warning("lease lost during delivery", extra={"notification_id": job.notification_id})
        return AttemptOutcome(ClaimState.BUSY)
    session.add(Attempt(**attempt_row(job, result)))
    row = session.execute(
        select(Notification).where(Notification.id == job.notification_id).with_for_update()
    ).scalar_one()
    if row.lease_token != job.lease_token:
        # We overran the lease and another worker took over, or a fresh cycle voided it:
        # keep the attempt on record, leave the state to the lease holder or the cycle.
        log.warning("lease lost during delivery", extra={"notification_id": row.id})
        status = row.status
        count_lost(session, [job])
        session.expire(row)
        return AttemptOutcome(ClaimState.BUSY, status=status)
    row.attempt_count += 1

    row.lease_token = None
    row.lease_expires_at = None
    if result.success:
        for name, value in sent_values(now).items():
            setattr(row, name, value)
        row.url = job.url  # a move repoints it; a POST claimed before went to the old URL
        if job.endpoint_id is not None and (job.endpoint_failing
                                            or job.endpoint_id in failing):
            session.flush()  # SENT before the queue moves: it is no longer the head
            recover(session, job.endpoint_id, [job], now)
        return AttemptOutcome(ClaimState.CLAIMED, status=row.status)
    endpoint = _update_endpoint_health(session, job, result, now)
    return record_failure(session, row, endpoint, job, result, settings, now)


def _update_endpoint_health(session: Session, job: DeliveryJob, result: sender.SendResult,
                            now: datetime) -> Endpoint | None:
    """A failure loads and updates the endpoint, locked FOR UPDATE already
    (``lock_endpoints``). A failure of the URL it moved from is not the new URL's."""
    if job.endpoint_id is None:
        return None
    endpoint = session.get(Endpoint, job.endpoint_id, with_for_update=True)
    if endpoint is None or job.moved(endpoint.url):
        return endpoint
    endpoint.consecutive_failures += 1
    endpoint.last_failure_at = now
    endpoint.last_error = result.error
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    return endpoint
