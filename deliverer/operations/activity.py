"""The operator console's activity feeds: the event log, merchants' and operators'
actions, alerts. Newest first, every partner's, bounded like ``operations.inspect``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from deliverer.models import Alert, Endpoint, Event, Notification, Partner, PartnerRequest
from deliverer.notifications.queries import is_uuid
from deliverer.operations.inspect import MAX_ROWS


@dataclass(frozen=True)
class EventRow:
    event: Event
    partner_name: str
    notification: Notification | None


def recent_events(session: Session, *, partner: str | None = None,
                  limit: int = 100) -> list[EventRow]:
    """The event log: newest events with their notification's delivery status."""
    query = (
        select(Event, Partner.name, Notification)
        .join(Partner, Partner.id == Event.partner_id)
        .outerjoin(Notification, Notification.event_id == Event.id)
    )
    if partner and partner.strip():
        partner = partner.strip()
        if is_uuid(partner):
            query = query.where(Event.partner_id == partner)
        else:
            query = query.where(func.lower(Partner.name) == partner.lower())
    rows = session.execute(
        query.order_by(Event.created_at.desc(), Event.id.desc())
        .limit(max(1, min(limit, MAX_ROWS)))
    ).all()
    return [EventRow(e, name, n) for e, name, n in rows]


def recent_actions(session: Session, limit: int = 50) -> list[tuple[PartnerRequest, str]]:
    """Retries, resends and ignores by merchants and operators, newest first."""
    rows = session.execute(
        select(PartnerRequest, Partner.name)
        .join(Partner, Partner.id == PartnerRequest.partner_id)
        .order_by(PartnerRequest.created_at.desc(), PartnerRequest.id.desc())
        .limit(max(1, min(limit, MAX_ROWS)))
    ).all()
    return [(r, name) for r, name in rows]


def recent_alerts(session: Session, limit: int = 20) -> list[tuple[Alert, str, str | None]]:
    """Failing-endpoint alerts, newest first: (alert, partner name, endpoint URL)."""
    rows = session.execute(
        select(Alert, Partner.name, Endpoint.url)
        .join(Partner, Partner.id == Alert.partner_id)
        .outerjoin(Endpoint, and_(Endpoint.id == Alert.endpoint_id))
        .order_by(Alert.created_at.desc(), Alert.id.desc())
        .limit(max(1, min(limit, MAX_ROWS)))
    ).all()
    return [(a, name, url) for a, name, url in rows]
