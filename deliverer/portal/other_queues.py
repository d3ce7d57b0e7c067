"""Retry queues the portal's endpoints table does not show: webhooks still retried at a
URL that is not one of the merchant's endpoints (an event's callbackUrl, or an earlier
webhook URL left behind with numbering of its own). A black-box try found them in the
event log only: no queue, no next retry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deliverer.models import Endpoint, Notification, NotificationStatus, still_to_try

LIMIT = 200


@dataclass(frozen=True)
class OtherQueue:
    url: str
    queue_depth: int
    next_retry_at: datetime | None


def other_queues(session: Session, partner_id: str) -> list[OtherQueue]:
    """The partner's URL rows that are not endpoints (nor deleted ones) with FAILED
    notifications still to be tried, oldest row first: one grouped statement, bounded
    (a merchant with a callback URL per order has thousands of rows)."""
    rows = session.execute(
        select(Endpoint.url, func.count(), func.min(Notification.next_attempt_at))
        .join(Notification, Notification.endpoint_id == Endpoint.id)
        .where(Endpoint.partner_id == partner_id, Endpoint.registered.is_(False),
               Endpoint.deleted_at.is_(None),
               Notification.partner_id == partner_id,
               Notification.status == NotificationStatus.FAILED,
               still_to_try())
        .group_by(Endpoint.id, Endpoint.url).order_by(Endpoint.id).limit(LIMIT)).all()
    return [OtherQueue(url, int(count), next_at) for url, count, next_at in rows]
