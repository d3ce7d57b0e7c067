"""Recording successful deliveries: most of them in bulk, a few statements whatever their
number; a success on a failing endpoint recovers it (``endpoint_queue.on_recovery``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from deliverer.delivery import endpoint_queue, sender
from deliverer.delivery.claim import _IDS, _N, _NOTIFICATIONS, _NOW, DeliveryJob
from deliverer.models import Attempt, Endpoint, NotificationStatus, table_of

_INSERT_ATTEMPTS = insert(table_of(Attempt))
_MARK_SENT = (
    update(_NOTIFICATIONS)
    .where(_N.id.in_(_IDS), _N.lease_token.in_(bindparam("tokens", expanding=True)))
    .values(status=NotificationStatus.SENT, sent_at=_NOW, next_attempt_at=None,
            scheduled_for=None, lease_token=None, lease_expires_at=None, held=False,
            attempt_count=_N.attempt_count + 1, updated_at=_NOW)
)
_ENDPOINTS_FOR_KEY_SHARE = (
    select(Endpoint.id, Endpoint.failing_since)
    .where(Endpoint.id.in_(bindparam("endpoint_ids", expanding=True)))
    .order_by(Endpoint.id)
    .with_for_update(key_share=True)
)


def attempt_row(job: DeliveryJob, result: sender.SendResult) -> dict[str, Any]:
    """The attempt's row: every POST is recorded so, whoever made it."""
    return {"notification_id": job.notification_id, "trigger": job.trigger, "url": job.url,
            "started_at": result.started_at, "duration_ms": result.duration_ms,
            "success": result.success, "response_status": result.status_code,
            "response_body": result.body, "error_payload": result.error}


def is_plain_success(job: DeliveryJob, result: sender.SendResult) -> bool:
    """Delivered, to an endpoint that was not failing: nothing moves but this row."""
    return result.success and not job.endpoint_failing


def record_successes(session: Session,
                     done: Sequence[tuple[DeliveryJob, sender.SendResult]],
                     now: datetime) -> int:
    """Plain successes, in bulk (most deliveries): their attempts, and the notifications
    SENT, in three statements whatever their number. Returns how many rows were still
    leased by us (the others' attempts are kept on record; their lease holder decides).
    Commits nothing."""
    if not done:
        return 0
    connection = session.connection()
    # Table-level: a plain executemany, none of the ORM's bulk machinery.
    connection.execute(_INSERT_ATTEMPTS, [attempt_row(job, result) for job, result in done])
    updated = connection.execute(_MARK_SENT, {
        "ids": [job.notification_id for job, _ in done],
        "tokens": list({job.lease_token for job, _ in done}), "now": now}).rowcount
    # A plain success on an endpoint that became failing meanwhile still releases it
    # (see endpoint_failing_now).
    endpoint_ids = sorted({job.endpoint_id for job, _ in done if job.endpoint_id is not None})
    if endpoint_ids:
        for endpoint_id in endpoint_failing_now(session, endpoint_ids):
            endpoint_queue.on_recovery(session, endpoint_id, now)
    return updated


def endpoint_failing_now(session: Session, endpoint_ids: list[int]) -> list[int]:
    """Which of these endpoints are failing *now*, not when their jobs were claimed.

    A failure recorded while a POST was in flight can make the endpoint failing and hold
    later notifications behind this one, the head; if the head's success then went by the
    claim-time snapshot, nothing would ever release them (they stayed held, FAILED with no
    next attempt, for good). A failure is recorded under the endpoint's FOR UPDATE lock,
    which conflicts with FOR KEY SHARE: whichever of the two commits second sees the
    other's outcome (the success recovers the endpoint, or the failure finds no head).
    """
    rows = session.connection().execute(_ENDPOINTS_FOR_KEY_SHARE,
                                        {"endpoint_ids": endpoint_ids}).all()
    return [endpoint_id for endpoint_id, failing_since in rows if failing_since is not None]
