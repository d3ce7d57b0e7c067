"""Recording a failed delivery: the ladder gives the next attempt time (the receiver's
Retry-After included), the notification joins its endpoint's queue, a 410 Gone or days of
failures (``auto_disable``) disable the endpoint, and a long run of failures raises an
alert."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from deliverer import outbox
from deliverer.alerts import service as alerts
from deliverer.config import Settings
from deliverer.delivery import endpoint_queue, ladder
from deliverer.delivery.claim import ClaimState, DeliveryJob
from deliverer.delivery.recording import auto_disable
from deliverer.delivery.recording.outcome import AttemptOutcome, NextAttempt
from deliverer.delivery.sending import sender
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.delivery.undeliverable import ENDPOINT_DELETED, stop_where
from deliverer.models import Endpoint, Lane, Notification, NotificationStatus, Trigger


def record_failure(session: Session, row: Notification, endpoint: Endpoint | None,
                   job: DeliveryJob, result: sender.SendResult, settings: Settings,
                   now: datetime) -> AttemptOutcome:
    """A failed attempt of ``row`` (leased by us, its attempt written): the ladder's next
    time, the endpoint's queue, its alerts, and whether to come back soon."""
    row.status = NotificationStatus.FAILED
    row.retry_attempts += 1
    row.latest_error_payload = result.error
    row.lane = Lane.RETRY
    due = ladder.next_attempt_at(settings, cycle_started_at=row.cycle_started_at,
                                 failed_at=now, failures=row.retry_attempts,
                                 retry_after=result.retry_after)
    row.next_attempt_at = due
    row.scheduled_for = None
    if endpoint is not None:
        if endpoint.deleted_at is not None:
            # Deleted while this attempt was in flight (the deletion leaves those to their
            # worker): stopped as the deletion stopped the rest, rather than joining a
            # queue nothing would release.
            session.flush()
            stop_where(session, error_payload(FailureKind.ENDPOINT_DISABLED, ENDPOINT_DELETED),
                       Notification.id == row.id)
            session.expire(row)
            return AttemptOutcome(ClaimState.CLAIMED, status=NotificationStatus.NOT_SENT)
        if job.moved(endpoint.url):
            # Moved while this attempt was in flight: the old URL's answer says nothing
            # of the new one. Tried there now, as the move probed the endpoint's head
            # (``relocation.relocate``), even when the ladder had no rung left: the new
            # URL never had its try; or when the pause the new URL asked for since
            # (Retry-After) ends, which a claim would otherwise hold it for. (Due by
            # the cycle's end at the latest, which the claim checks.)
            due = row.next_attempt_at = min(
                max(now, endpoint.retry_after_until or now),
                ladder.cycle_deadline(settings, row.cycle_started_at))
        elif result.status_code == 410:
            _disable_endpoint(session, endpoint, row, now)
            return AttemptOutcome(ClaimState.CLAIMED, status=row.status)
        elif auto_disable.failing_too_long(endpoint, settings, now):
            endpoint_queue.hold(row)
            auto_disable.disable(session, endpoint, settings, now, notification_id=row.id)
            return AttemptOutcome(ClaimState.CLAIMED, status=row.status)
        else:
            return _queue_behind(session, endpoint, row, job, result, settings, now, due)
    return _schedule(row, settings, now, due)


def _queue_behind(session: Session, endpoint: Endpoint, row: Notification, job: DeliveryJob,
                  result: sender.SendResult, settings: Settings, now: datetime,
                  due: datetime | None) -> AttemptOutcome:
    """The endpoint failed: its Retry-After pause, its queue, its alert."""
    if result.retry_after:
        # Not this notification's wait alone: the endpoint's. Its automatic sends claimed
        # meanwhile are held behind this one (``claim.lease_jobs``).
        endpoint.retry_after_until = now + timedelta(
            seconds=result.retry_after * settings.time_scale)
    if endpoint_queue.join_after_failure(session, endpoint.id, row, now):
        return AttemptOutcome(ClaimState.CLAIMED, status=row.status)
    if job.trigger == Trigger.AUTOMATIC:
        alerts.on_failed_retry(session, endpoint, row.id, row.retry_attempts,
                               (result.error or {}).get("message"), now)
    return _schedule(row, settings, now, due)


def _schedule(row: Notification, settings: Settings, now: datetime,
              due: datetime | None) -> AttemptOutcome:
    """Due within the sweep's horizon: its message goes out with the commit."""
    for name, value in outbox.marks(settings, due, now).items():
        setattr(row, name, value)
    if due is not None and outbox.hands_over(settings, due, now):
        return AttemptOutcome(ClaimState.CLAIMED, status=row.status,
                              next_attempt=NextAttempt(row.id, Lane.RETRY, due), due_at=due)
    return AttemptOutcome(ClaimState.CLAIMED, status=row.status, due_at=due)


def _disable_endpoint(session: Session, endpoint: Endpoint, row: Notification,
                      now: datetime) -> None:
    """410 Gone: the receiver says the endpoint no longer exists. Stop, and say so. The
    notification is held, like those behind it: re-enabling the endpoint releases them.

    Notifications in flight when the first 410 arrives get theirs too: only the one that
    disables the endpoint raises the alert (the endpoint row is locked FOR UPDATE here, so
    of concurrent recorders exactly one sees it enabled)."""
    endpoint_queue.hold(row)
    if endpoint.disabled_at is not None:
        return
    endpoint.disabled_at = now
    endpoint.disabled_reason = "The receiver answered 410 Gone"
    alerts.raise_alert(
        session, endpoint, alerts.KIND_DISABLED,
        f"Webhook endpoint {alerts.describe(endpoint)} answered 410 Gone and has been "
        f"disabled. Enable it again once it is back: {alerts.how_to_enable(endpoint)}.",
        notification_id=row.id, now=now)
