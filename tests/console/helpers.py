"""Making FAILED notifications the way production does: real attempts to a real receiver."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from deliverer.config import Settings
from deliverer.db import session_scope
from deliverer.models import Notification, NotificationStatus, PartnerRequest
from deliverer.publishing.service import record_event as publish_event
from tests.support import helpers as h


@dataclass(frozen=True)
class Published:
    notification_id: str
    reference: str


def publish(settings: Settings, partner_id: str, reference: str,
            event_type: str = "transaction.paid", payload: dict | None = None) -> Published:
    with session_scope() as session:
        published = publish_event(session, settings, partner_id=partner_id, type=event_type,
                                  reference=reference, payload=payload or {"amount": 1000})
    return Published(published.notification_id, reference)


def wait_failed(nid: str, attempts: int = 1, timeout: float = 20.0) -> Notification:
    """Until the notification is FAILED with at least ``attempts`` attempts recorded."""
    return h.wait_until(
        lambda: (row if (row := h.notification(nid)).status == NotificationStatus.FAILED
                 and row.attempt_count >= attempts else None),
        timeout=timeout, message=f"{nid} FAILED after {attempts} attempt(s)")


def requests_of(nid: str) -> list[PartnerRequest]:
    with session_scope() as session:
        rows = list(session.scalars(select(PartnerRequest)
                                    .where(PartnerRequest.notification_id == nid)
                                    .order_by(PartnerRequest.id)))
        session.expunge_all()
        return rows
