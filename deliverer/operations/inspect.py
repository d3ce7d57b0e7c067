"""Read-only queries behind the operator console: failing endpoints, notification search
and detail (the event log and the recent actions are in ``operations.activity``).

Operators see every partner, so nothing here is scoped to one (unlike the partner API).
Every list is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from deliverer.models import (
    Attempt,
    Endpoint,
    Event,
    Notification,
    NotificationStatus,
    Partner,
    PartnerRequest,
    still_to_try,
)
from deliverer.notifications.queries import is_uuid

MAX_ROWS = 500


@dataclass(frozen=True)
class FailingEndpoint:
    endpoint: Endpoint
    partner_name: str
    queue_depth: int  # FAILED and still to be tried: climbing the ladder or held behind it
    held: int  # of which waiting behind the head of the queue
    exhausted: int  # FAILED with no attempt left (30 days passed)
    next_retry_at: datetime | None
    last_error: dict[str, Any] | None
    last_error_at: datetime | None


def failing_endpoints(session: Session, limit: int = 200) -> list[FailingEndpoint]:
    """Endpoints failing now, disabled, or with FAILED notifications; longest failing first."""
    live = still_to_try()
    per_endpoint = (
        select(
            Notification.endpoint_id.label("endpoint_id"),
            func.sum(case((live, 1), else_=0)).label("queued"),
            func.sum(case((Notification.held.is_(True), 1), else_=0)).label("held"),
            func.sum(case((live, 0), else_=1)).label("exhausted"),
            func.min(Notification.next_attempt_at).label("next_retry_at"),
        )
        .where(Notification.status == NotificationStatus.FAILED,
               Notification.endpoint_id.is_not(None))
        .group_by(Notification.endpoint_id)
        .subquery()
    )
    rows = session.execute(
        select(Endpoint, Partner.name, per_endpoint.c.queued, per_endpoint.c.held,
               per_endpoint.c.exhausted, per_endpoint.c.next_retry_at)
        .join(Partner, Partner.id == Endpoint.partner_id)
        .outerjoin(per_endpoint, per_endpoint.c.endpoint_id == Endpoint.id)
        .where(or_(Endpoint.failing_since.is_not(None), Endpoint.disabled_at.is_not(None),
                   per_endpoint.c.endpoint_id.is_not(None)),
               # Tried no more: it stayed listed as failing for good (a black-box try).
               Endpoint.deleted_at.is_(None))
        .order_by(Endpoint.failing_since.is_(None), Endpoint.failing_since,
                  func.coalesce(per_endpoint.c.queued, 0).desc(), Endpoint.id)
        .limit(min(limit, MAX_ROWS))
    ).all()
    # The last failed attempt's error is on the endpoint row (``Endpoint.last_error``):
    # read from attempts, one look-up per listed endpoint, the page took 28-50 s at 5 M
    # attempts (the scale try).
    return [FailingEndpoint(
        endpoint=endpoint, partner_name=partner_name, queue_depth=int(queued or 0),
        held=int(held or 0), exhausted=int(exhausted or 0), next_retry_at=next_retry_at,
        last_error=endpoint.last_error or (_a_failed_ones_error(session, endpoint.id)
                                           if endpoint.failing_since else None),
        last_error_at=endpoint.last_failure_at if endpoint.last_error else None)
        for endpoint, partner_name, queued, held, exhausted, next_retry_at in rows]


def _a_failed_ones_error(session: Session, endpoint_id: int) -> dict[str, Any] | None:
    """A failing endpoint that has not failed since ``last_error`` was added (0015): the
    error of one of its FAILED notifications, one probe of ``ix_notifications_failed``.
    Not for one that is not failing: after a move (which clears ``last_error``) that
    was the old URL's error, shown beside the new URL, which had not failed (a
    black-box try)."""
    return session.scalar(
        select(Notification.latest_error_payload)
        .where(Notification.endpoint_id == endpoint_id,
               Notification.status == NotificationStatus.FAILED).limit(1)) or None


def _partner_matches(partner: str) -> ColumnElement[bool]:
    """A partner id, else part of its name (joined as ``Partner``)."""
    partner = partner.strip()
    if is_uuid(partner):
        return Partner.id == partner
    pattern = "%" + partner.lower().replace("\\", "\\\\").replace("%", "\\%") \
        .replace("_", "\\_") + "%"
    return func.lower(Partner.name).like(pattern, escape="\\")


LAST_DELIVERED_WINDOW = 1_000


@dataclass(frozen=True)
class PartnerEndpoint:
    endpoint: Endpoint
    partner_name: str
    pending: int  # PENDING: due for a first attempt (or paced by the rate limit)
    queued: int  # FAILED and still to be tried: climbing the ladder or held behind it
    held: int
    last_success_at: datetime | None


def partner_endpoints(session: Session, *, partner: str | None = None,
                      failing_only: bool = False, limit: int = 200) -> list[PartnerEndpoint]:
    """Registered endpoints by partner (name, then creation), each with what it holds;
    ``failing_only``: those failing or disabled."""
    # A healthy endpoint's success writes nothing to its row (last_success_at is set when
    # a failing one recovers): the latest delivery among its last LAST_DELIVERED_WINDOW
    # notifications says when it last took one, a bounded range of the endpoint's unique
    # index (a failing endpoint's backlog is not read).
    last_delivered = (
        select(func.max(Notification.sent_at))
        .where(Notification.endpoint_id == Endpoint.id,
               Notification.sequence > Endpoint.last_sequence - LAST_DELIVERED_WINDOW,
               Notification.status == NotificationStatus.SENT)
        .correlate(Endpoint).scalar_subquery())
    query = (
        select(Endpoint, Partner.name, last_delivered)
        .join(Partner, Partner.id == Endpoint.partner_id)
        .where(Endpoint.registered.is_(True))
    )
    if partner and partner.strip():
        query = query.where(_partner_matches(partner))
    if failing_only:
        query = query.where(or_(Endpoint.failing_since.is_not(None),
                                Endpoint.disabled_at.is_not(None)))
    rows = session.execute(
        query.order_by(Partner.name, Partner.id, Endpoint.is_default.desc(),
                       Endpoint.created_at, Endpoint.id)
        .limit(max(1, min(limit, MAX_ROWS)))
    ).all()
    held = _holdings(session, [e.id for e, _name, _sent in rows])
    return [PartnerEndpoint(e, name, *held.get(e.id, (0, 0, 0)),
                            max((t for t in (sent, e.last_success_at) if t is not None),
                                default=None))
            for e, name, sent in rows]


def _holdings(session: Session, endpoint_ids: list[int]) -> dict[int, tuple[int, int, int]]:
    """What each of the listed endpoints holds (pending, queued, held), counted for
    those alone: counting every endpoint's and joining the page's took 200-400 ms once
    failing endpoints held hundreds of thousands (a scale try)."""
    if not endpoint_ids:
        return {}
    live = still_to_try()
    counted = session.execute(
        select(
            Notification.endpoint_id,
            func.sum(case((Notification.status == NotificationStatus.PENDING, 1), else_=0)),
            func.sum(case((and_(Notification.status == NotificationStatus.FAILED, live), 1),
                          else_=0)),
            func.sum(case((Notification.held.is_(True), 1), else_=0)),
        )
        .where(Notification.endpoint_id.in_(endpoint_ids),
               Notification.status.in_((NotificationStatus.PENDING,
                                        NotificationStatus.FAILED)))
        .group_by(Notification.endpoint_id))
    return {key: (int(p or 0), int(q or 0), int(h or 0)) for key, p, q, h in counted}


@dataclass(frozen=True)
class SearchResult:
    notification: Notification
    event: Event
    partner_name: str


def endpoint_number(session: Session, public_id: str) -> int | None:
    """The row id of the endpoint whose public id (``ep_...``) is given, if any."""
    found: int | None = session.scalar(select(Endpoint.id).where(Endpoint.public_id == public_id))
    return found


def search_notifications(session: Session, *, q: str | None = None,
                         partner: str | None = None, reference: str | None = None,
                         status: str | None = None, endpoint_id: int | None = None,
                         limit: int = 100) -> list[SearchResult]:
    """Newest first. ``q``: a notification or event id, an endpoint's public id
    (``ep_...``, one that exists), else a reference; ``partner``: a partner id, else part
    of its name."""
    query = (
        select(Notification, Event, Partner.name)
        .join(Event, Event.id == Notification.event_id)
        .join(Partner, Partner.id == Notification.partner_id)
    )
    q = (q or "").strip()
    if q:
        if is_uuid(q):
            query = query.where(or_(Notification.id == q, Notification.event_id == q))
        elif q.startswith("ep_") and (number := endpoint_number(session, q)) is not None:
            query = query.where(Notification.endpoint_id == number)
        else:
            query = query.where(Event.reference == q)
    if partner and partner.strip():
        query = query.where(_partner_matches(partner))
    if reference and reference.strip():
        query = query.where(Event.reference == reference.strip())
    if status:
        query = query.where(Notification.status == status)
    if endpoint_id is not None:
        query = query.where(Notification.endpoint_id == endpoint_id)
    rows = session.execute(
        query.order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(max(1, min(limit, MAX_ROWS)))
    ).all()
    return [SearchResult(n, e, name) for n, e, name in rows]


@dataclass(frozen=True)
class NotificationDetail:
    notification: Notification
    event: Event
    partner: Partner
    endpoint: Endpoint | None
    attempts: list[Attempt]
    requests: list[PartnerRequest]
    queue_head: Notification | None  # what a held notification waits behind


def notification_detail(session: Session, notification_id: str) -> NotificationDetail | None:
    if not is_uuid(notification_id):
        return None
    notification = session.get(Notification, notification_id)
    if notification is None:
        return None
    event = session.get(Event, notification.event_id)
    partner = session.get(Partner, notification.partner_id)
    assert event is not None and partner is not None  # foreign keys
    endpoint = (session.get(Endpoint, notification.endpoint_id)
                if notification.endpoint_id is not None else None)
    attempts = list(session.scalars(
        select(Attempt).where(Attempt.notification_id == notification.id)
        .order_by(Attempt.started_at.desc(), Attempt.id.desc()).limit(MAX_ROWS)))
    requests = list(session.scalars(
        select(PartnerRequest).where(PartnerRequest.notification_id == notification.id)
        .order_by(PartnerRequest.created_at.desc(), PartnerRequest.id.desc())
        .limit(MAX_ROWS)))
    head = None
    if getattr(notification, "held", False) and notification.endpoint_id is not None:
        head = session.scalar(
            select(Notification).where(
                Notification.endpoint_id == notification.endpoint_id,
                Notification.status == NotificationStatus.FAILED,
                Notification.held.is_(False),
                Notification.next_attempt_at.is_not(None),
            ).order_by(Notification.sequence).limit(1))
    return NotificationDetail(notification, event, partner, endpoint, attempts, requests, head)
