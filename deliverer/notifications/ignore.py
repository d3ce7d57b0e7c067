"""Seed 003 "Ignore notification": a notification out of the retry queue for good."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from deliverer import lease
from deliverer.delivery import endpoint_queue
from deliverer.errors import Conflict, DelivererError
from deliverer.models import Notification, NotificationStatus, RequestKind, utcnow
from deliverer.notifications.audit import ACCEPTED, record_request, reject
from deliverer.notifications.cycle import ALREADY_SENT
from deliverer.notifications.queries import get_notification, is_uuid
from deliverer.partners.service import Principal

BEING_SENT = ("Notification is being sent right now: try again in a moment, once its "
              "attempt is recorded")


def ignore(session: Session, principal: Principal, notification_id: str,
           now: datetime | None = None) -> Notification:
    """Seed 003 "Ignore notification": out of the retry queue for good."""
    now = now or utcnow()
    try:
        notification = get_notification(session, principal.partner_id, notification_id,
                                        for_update=True)
        if notification.status == NotificationStatus.SENT:
            raise Conflict(ALREADY_SENT)
        if not lease.ran_out(notification.lease_expires_at, now):
            # Its POST may be answered 2xx a moment later: NOT_SENT would then say that a
            # webhook the merchant's server acknowledged was never sent.
            raise Conflict(BEING_SENT)
    except DelivererError as error:
        reject(session, principal, RequestKind.IGNORE, error,
               notification_id=notification_id if is_uuid(notification_id) else None)
    if notification.status != NotificationStatus.NOT_SENT:
        notification.status = NotificationStatus.NOT_SENT
        notification.next_attempt_at = None
        notification.scheduled_for = None
        notification.lease_token = None
        notification.lease_expires_at = None
        notification.held = False
        notification.updated_at = now
        if notification.endpoint_id is not None:
            # If it was the head of its endpoint's queue, the next one takes over.
            session.flush()
            endpoint_queue.promote_next(session, notification.endpoint_id, now)
    record_request(session, principal, RequestKind.IGNORE, ACCEPTED,
                   notification_id=notification.id, now=now)
    return notification
