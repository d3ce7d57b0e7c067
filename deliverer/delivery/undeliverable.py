"""What becomes of a notification that is to get no POST: NOT_SENT for good (its
partner takes no webhooks, its endpoint was deleted), or held until something releases
it (a disabled endpoint, webhooks turned off, a pause asked for).

Not the claim's alone, though it finds most such rows: an endpoint's deletion and a
delivery's failure stop rows the same way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from deliverer.models import Notification, NotificationStatus, utcnow

ENDPOINT_DELETED = "The endpoint was deleted"


def stop_for_good(session: Session, notification_id: str, error: dict[str, Any]) -> None:
    """No request, ever: the partner was deactivated or moved to polling after this was
    queued. NOT_SENT, as what is published for such partners is (an operator's replay
    sends it if that changes back)."""
    stop_where(session, error, Notification.id == notification_id)


def stop_where(session: Session, error: dict[str, Any],
               *conditions: ColumnElement[bool]) -> int:
    """NOT_SENT, with nothing ahead and why on record, for every row matching
    ``conditions``; returns how many."""
    result = session.execute(
        update(Notification).where(*conditions)
        .values(status=NotificationStatus.NOT_SENT, next_attempt_at=None, lease_token=None,
                lease_expires_at=None, held=False, scheduled_for=None,
                latest_error_payload=error, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def hold_undeliverable(session: Session, notification_id: str,
                       error: dict[str, Any]) -> None:
    """No request while the endpoint is disabled (a 410 Gone), the merchant has turned
    webhooks off, or the receiver asked for a pause (Retry-After): the notification is
    held, and saving the settings (``webhook_settings.resume_deliveries``) or, for a
    pause, a delivery's success (``endpoint_queue.on_recovery``) releases it, through
    ``endpoint_queue.drain``."""
    session.execute(
        update(Notification).where(Notification.id == notification_id)
        .values(status=NotificationStatus.FAILED, next_attempt_at=None, lease_token=None,
                lease_expires_at=None, held=True, latest_error_payload=error)
        .execution_options(synchronize_session=False)
    )
