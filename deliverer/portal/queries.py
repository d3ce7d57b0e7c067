"""What the merchant portal's pages read: always one partner's rows, every list bounded,
every query served by an index (``tests/portal/test_indexes.py`` checks the plans on
PostgreSQL with 100,000 notifications)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import and_, case, exists, func, select, true, tuple_
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.cursors import decode_cursor, encode_cursor
from deliverer.models import (
    Alert,
    Attempt,
    Endpoint,
    Event,
    Notification,
    NotificationStatus,
    WebhookSettings,
    active_secrets,
    still_to_try,
)
from deliverer.notifications.queries import is_uuid
from deliverer.operations import inspect
from deliverer.portal.chart import Chart, hourly_buckets

QUEUE_LIMIT = 100
PAGE_SIZE = 25


def _listed(partner_id: str) -> Any:
    """The partner's endpoints the portal shows: its registered ones (issue 19), not the
    rows of events' own callback URLs."""
    return and_(Endpoint.partner_id == partner_id, Endpoint.registered.is_(True))


def endpoint_ref(endpoint: Endpoint) -> str | None:
    """How the portal's addresses name an endpoint (its public id), or None for one it
    does not show."""
    return endpoint.public_id if endpoint.registered else None


def get_endpoint(session: Session, partner_id: str, ref: str) -> Endpoint | None:
    """The partner's endpoint ``ref`` names, or None (also for another partner's)."""
    if len(ref) > 40:
        return None
    return session.scalar(select(Endpoint).where(Endpoint.public_id == ref,
                                                 _listed(partner_id)))


def secrets_of(session: Session, endpoint: Endpoint, now: datetime) -> list[str]:
    """What deliveries to the endpoint are signed with (as ``delivery.claim`` signs): its
    own secrets, or the partner's webhook-settings ones (the default endpoint)."""
    if endpoint.signing_secret:
        return active_secrets(endpoint.signing_secret, endpoint.previous_secret,
                              endpoint.previous_secret_expires_at, now)
    row = session.get(WebhookSettings, endpoint.partner_id)
    return row.active_secrets(now) if row else []


@dataclass(frozen=True)
class EndpointSummary:
    endpoint: Endpoint
    status: str
    queue_depth: int  # FAILED and still to be tried: climbing the ladder or held
    exhausted: int  # FAILED with no attempt left
    next_retry_at: datetime | None
    last_error: dict[str, Any] | None
    chart: Chart


def endpoints_overview(session: Session, partner_id: str,
                       now: datetime) -> list[EndpointSummary]:
    endpoints = list(session.scalars(select(Endpoint).where(_listed(partner_id))
                                     .order_by(Endpoint.created_at, Endpoint.id).limit(200)))
    live = still_to_try()
    counts = {row.endpoint_id: row for row in session.execute(
        select(Notification.endpoint_id,
               func.sum(case((live, 1), else_=0)).label("queued"),
               func.sum(case((live, 0), else_=1)).label("exhausted"),
               func.min(Notification.next_attempt_at).label("next_retry_at"))
        .where(Notification.partner_id == partner_id,
               Notification.status == NotificationStatus.FAILED)
        .group_by(Notification.endpoint_id))}
    result = []
    for endpoint in endpoints:
        row = counts.get(endpoint.id)
        result.append(EndpointSummary(
            endpoint=endpoint, status=str(endpoint.status),
            queue_depth=int(row.queued or 0) if row else 0,
            exhausted=int(row.exhausted or 0) if row else 0,
            next_retry_at=row.next_retry_at if row else None,
            last_error=_last_error(session, endpoint) if row else None,
            chart=attempts_chart(session, endpoint, now)))
    return result


def _last_error(session: Session, endpoint: Endpoint) -> dict[str, Any] | None:
    """The latest error of the notification retried next (the head of the queue), or of
    any FAILED one when none has an attempt left."""
    failed = (Notification.endpoint_id == endpoint.id,
              Notification.status == NotificationStatus.FAILED)
    payload = session.scalar(
        select(Notification.latest_error_payload)
        .where(*failed, Notification.next_attempt_at.is_not(None))
        .order_by(Notification.next_attempt_at).limit(1))
    if payload is None:
        payload = session.scalar(select(Notification.latest_error_payload).where(*failed)
                                 .limit(1))
    return payload or None


def attempts_chart(session: Session, endpoint: Endpoint, now: datetime) -> Chart:
    """Attempts to the endpoint in each of the last 24 hours, and how many succeeded."""
    starts = hourly_buckets(now)
    edges = [*starts, starts[-1] + timedelta(hours=1)]
    columns = []
    for low, high in pairwise(edges):
        inside = and_(Attempt.started_at >= low, Attempt.started_at < high)
        columns.append(func.sum(case((inside, 1), else_=0)))
        columns.append(func.sum(case((and_(inside, Attempt.success.is_(True)), 1), else_=0)))
    row = session.execute(
        select(*columns)
        .join(Notification, Notification.id == Attempt.notification_id)
        # By URL, not by the notification's endpoint: a notification repointed since
        # (a manual retry to a new URL) keeps its attempts to this one.
        .where(Attempt.started_at >= edges[0], Attempt.url == endpoint.url,
               Notification.partner_id == endpoint.partner_id)).one()
    values = [int(v or 0) for v in row]
    return Chart(starts, values[0::2], values[1::2])


@dataclass(frozen=True)
class QueueItem:
    notification: Notification
    event: Event


@dataclass(frozen=True)
class QueuePage:
    items: list[QueueItem]
    total: int  # the endpoint's FAILED notifications, all pages
    before: int  # how many of them come before this page
    next_after: int | None  # the sequence the next page starts after; None: the last


def retry_queue(session: Session, endpoint: Endpoint, after: int | None = None) -> QueuePage:
    """The endpoint's FAILED notifications, earliest first (the order it is retried
    in), a page of them: those after the sequence number ``after``."""
    if after is not None and not 0 <= after < 2**63:
        after = None  # not a sequence number (a BIGINT): the first page
    failed = and_(Notification.endpoint_id == endpoint.id,
                  Notification.partner_id == endpoint.partner_id,
                  Notification.status == NotificationStatus.FAILED)
    rows = session.execute(
        select(Notification, Event).join(Event, Event.id == Notification.event_id)
        .where(failed, Notification.sequence > after if after is not None else true())
        .order_by(Notification.sequence, Notification.id)
        .limit(QUEUE_LIMIT + 1)).all()

    def count(*where: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(Notification)
                                  .where(failed, *where)) or 0)

    more = len(rows) > QUEUE_LIMIT
    items = [QueueItem(n, e) for n, e in rows[:QUEUE_LIMIT]]
    return QueuePage(items, count(),
                     count(Notification.sequence <= after) if after is not None else 0,
                     items[-1].notification.sequence if more else None)


def notification_detail(session: Session, partner_id: str,
                        notification_id: str) -> inspect.NotificationDetail | None:
    """The console's view of a notification, if it is the partner's."""
    detail = inspect.notification_detail(session, notification_id)
    if detail is None or detail.notification.partner_id != partner_id:
        return None
    return detail


def headers_sent(notification_id: str, attempt: Attempt, settings: Settings) -> dict[str, str]:
    """The headers of an attempt's POST (``delivery.sending.perform`` and ``sender``), its
    signatures left out: a receiver checks them, a person reading the page need not."""
    return {"Content-Type": "application/json", "Accept": "*/*",
            "User-Agent": settings.user_agent, "webhook-id": notification_id,
            "webhook-timestamp": str(int(attempt.started_at.timestamp())),
            "webhook-signature": "v1,… (one per active signing secret; not shown)"}


@dataclass(frozen=True)
class EventFilters:
    status: str | None = None
    event_type: str | None = None
    reference: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class Delivery:
    notification: Notification
    endpoint_url: str | None


@dataclass(frozen=True)
class EventRow:
    event: Event
    deliveries: list[Delivery]


def event_log(session: Session, partner_id: str, filters: EventFilters,
              limit: int = PAGE_SIZE) -> tuple[list[EventRow], str | None]:
    """Newest first, keyset-paginated on (created_at, id); each event with its
    notifications (one per endpoint it went to). Returns the rows and the next cursor."""
    query = select(Event).where(Event.partner_id == partner_id)
    if filters.event_type:
        query = query.where(Event.type == filters.event_type)
    if filters.reference:
        query = query.where(Event.reference == filters.reference)
    if filters.created_from:
        query = query.where(Event.created_at >= filters.created_from)
    if filters.created_to:
        query = query.where(Event.created_at < filters.created_to)
    if filters.status:
        query = query.where(exists().where(Notification.event_id == Event.id,
                                           Notification.status == filters.status))
    if filters.cursor:
        created_at, event_id = decode_cursor(filters.cursor, is_uuid)
        # A row-value comparison: an index range (the OR's form read every newer row).
        query = query.where(tuple_(Event.created_at, Event.id) < (created_at, event_id))
    events = list(session.scalars(
        query.order_by(Event.created_at.desc(), Event.id.desc()).limit(limit + 1)))
    more = len(events) > limit
    events = events[:limit]
    deliveries: dict[str, list[Delivery]] = {e.id: [] for e in events}
    if events:
        for notification, url in session.execute(
                select(Notification, Endpoint.url)
                .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
                .where(Notification.event_id.in_(list(deliveries)))
                .order_by(Notification.created_at, Notification.id)):
            deliveries[notification.event_id].append(Delivery(notification, url))
    next_cursor = encode_cursor(events[-1].created_at, events[-1].id) if more else None
    return [EventRow(e, deliveries[e.id]) for e in events], next_cursor


def get_event(session: Session, partner_id: str, event_id: str) -> EventRow | None:
    if not is_uuid(event_id):
        return None
    event = session.scalar(select(Event).where(Event.id == event_id,
                                               Event.partner_id == partner_id))
    if event is None:
        return None
    rows = session.execute(
        select(Notification, Endpoint.url)
        .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
        .where(Notification.event_id == event.id)
        .order_by(Notification.created_at, Notification.id)).all()
    return EventRow(event, [Delivery(n, url) for n, url in rows])


def alerts_of(session: Session, partner_id: str,
              limit: int = 100) -> list[tuple[Alert, str | None]]:
    """The partner's alerts, newest first, each with its endpoint's URL."""
    rows = session.execute(
        select(Alert, Endpoint.url).outerjoin(Endpoint, Endpoint.id == Alert.endpoint_id)
        .where(Alert.partner_id == partner_id)
        .order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit)).all()
    return [(a, url) for a, url in rows]
