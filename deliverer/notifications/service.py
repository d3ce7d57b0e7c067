"""What merchants do with their notifications: list, read, ignore (seeds 000, 003), and
the rules and the audit trail that retries and resends share.

Manual retries (``manual_retry``) are limited per notification (3) and per partner (10 a
rolling minute); resends per partner. The limits hold under concurrent requests: on
PostgreSQL the partner row is locked for the decision; on SQLite every write transaction
is serialised (BEGIN IMMEDIATE). They count rows of ``partner_requests``, the audit
trail, so they need no Redis.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import and_, bindparam, func, insert, or_, select
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery import endpoint_queue
from deliverer.errors import Conflict, DelivererError, NotificationNotFound, TooManyRequests
from deliverer.models import (
    Attempt,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    PartnerRequest,
    WebhookSettings,
    table_of,
    utcnow,
)
from deliverer.partners.service import Principal
from deliverer.publishing.service import next_sequence

NOT_FAILED = "Notification is not in FAILED status"
MAX_MANUAL = "Partner webhook notification has reached the maximum number of manual retries ({n})"
ALREADY_SENT = "Notification has already been delivered"

RATE_WINDOW = timedelta(minutes=1)


class RequestKind:
    RETRY = "retry"
    RESEND = "resend"
    IGNORE = "ignore"


ACCEPTED = "ACCEPTED"


# The canonical form only, in either case. uuid.UUID() also takes "urn:uuid:", braces,
# no hyphens or hyphens anywhere (up to 72 characters), and a "valid" id is written to
# the audit trail's String(36) column: a DataError, so a 500, on PostgreSQL.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_uuid(value: str) -> bool:
    return _UUID.fullmatch(value) is not None


def get_notification(session: Session, partner_id: str, notification_id: str,
                     *, for_update: bool = False) -> Notification:
    """The partner's notification, or 404 (also for another partner's: no existence leak)."""
    if not is_uuid(notification_id):
        raise NotificationNotFound()
    query = select(Notification).where(Notification.id == notification_id,
                                       Notification.partner_id == partner_id)
    if for_update:
        query = query.with_for_update()
    notification = session.scalar(query)
    if notification is None:
        raise NotificationNotFound()
    return notification


def get_event(session: Session, notification: Notification) -> Event:
    event = session.get(Event, notification.event_id)
    assert event is not None  # FK
    return event


def attempts_of(session: Session, notification_id: str) -> list[Attempt]:
    return list(session.scalars(
        select(Attempt).where(Attempt.notification_id == notification_id)
        .order_by(Attempt.started_at.desc(), Attempt.id.desc())
    ))


# -- listing ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ListFilters:
    status: str | None = None
    event_type: str | None = None
    reference: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    limit: int = 20
    cursor: str | None = None


class InvalidCursor(DelivererError):
    message = "Invalid cursor"


def _encode_cursor(created_at: datetime, notification_id: str) -> str:
    raw = f"{created_at.isoformat()}|{notification_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, notification_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not is_uuid(notification_id):
            raise InvalidCursor()
        created_at = created_at.astimezone(UTC)  # OverflowError for 0001-01-01T00:00+01:00
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor() from exc
    return created_at, notification_id


@dataclass(frozen=True)
class Page:
    items: list[tuple[Notification, Event]]
    next_cursor: str | None


def list_notifications(session: Session, partner_id: str, filters: ListFilters) -> Page:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = (
        select(Notification, Event)
        .join(Event, Event.id == Notification.event_id)
        .where(Notification.partner_id == partner_id)
    )
    if filters.status:
        query = query.where(Notification.status == filters.status)
    if filters.event_type:
        query = query.where(Event.type == filters.event_type)
    if filters.reference:
        query = query.where(Event.reference == filters.reference)
    if filters.created_from:
        query = query.where(Notification.created_at >= filters.created_from)
    if filters.created_to:
        query = query.where(Notification.created_at < filters.created_to)
    if filters.cursor:
        created_at, notification_id = _decode_cursor(filters.cursor)
        query = query.where(or_(
            Notification.created_at < created_at,
            and_(Notification.created_at == created_at, Notification.id < notification_id),
        ))
    rows = session.execute(
        query.order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(filters.limit + 1)
    ).all()
    items = [(r[0], r[1]) for r in rows[: filters.limit]]
    next_cursor = None
    if len(rows) > filters.limit:
        last = items[-1][0]
        next_cursor = _encode_cursor(last.created_at, last.id)
    return Page(items, next_cursor)


# -- the audit trail and the limits ---------------------------------------------------

# The statements of every manual retry are built once, with bind parameters: building
# them per request cost more CPU than executing them (SQLAlchemy's compiled cache spares
# only the compilation).
_REQUESTS = table_of(PartnerRequest)
_INSERT_REQUEST = insert(_REQUESTS).returning(_REQUESTS.c.id)


def record_request(session: Session, principal: Principal, kind: str, outcome: str, *,
                   notification_id: str | None = None, reference: str | None = None,
                   delivery_status: str | None = None,
                   now: datetime | None = None) -> int:
    """One row of the audit trail (what the rate limits count); returns its id."""
    return int(session.connection().execute(_INSERT_REQUEST, {
        "partner_id": principal.partner_id, "api_key_id": principal.api_key_id,
        "kind": kind, "outcome": outcome, "notification_id": notification_id,
        "reference": reference, "delivery_status": delivery_status,
        "created_at": now or utcnow(),
    }).scalar_one())


def reject(session: Session, principal: Principal, kind: str, error: DelivererError, *,
           notification_id: str | None = None, reference: str | None = None) -> NoReturn:
    """Keep a refused request on record even though the request's changes roll back,
    then raise ``error``."""
    session.rollback()
    record_request(session, principal, kind, error.code, notification_id=notification_id,
                   reference=reference)
    session.commit()
    raise error


def lock_partner(session: Session, partner_id: str) -> None:
    """Serialise the limit decisions of one partner (PostgreSQL; SQLite is serial anyway).

    FOR NO KEY UPDATE, not FOR UPDATE: it serialises these decisions just the same but
    does not block the FOR KEY SHARE locks that foreign-key checks take on the partner
    row (a worker inserting an alert while it holds a notification row), which made a
    lock-order deadlock with a retry holding the partner and waiting for that row.
    """
    session.execute(
        select(Partner.id).where(Partner.id == partner_id).with_for_update(key_share=True)
    )


# How many accepted requests of ``:kind`` the partner made since ``:since``, and the
# oldest one's time (for Retry-After).
_RATE = select(func.count(), func.min(PartnerRequest.created_at)).where(
    PartnerRequest.partner_id == bindparam("partner_id"),
    PartnerRequest.kind == bindparam("kind"), PartnerRequest.outcome == ACCEPTED,
    PartnerRequest.created_at > bindparam("since"))
# A notification's event and the partner's current webhook URL (seed 000: merchants fix
# their URL in the settings, then retry).
_EVENT_AND_URL = (
    select(Event, WebhookSettings.url)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == Event.partner_id)
    .where(Event.id == bindparam("event_id"))
)


def enforce_rate(count: int, oldest: datetime | None, per_minute: int,
                 now: datetime) -> None:
    if count >= per_minute:
        wait = 1
        if oldest is not None:
            wait = max(1, math.ceil((oldest + RATE_WINDOW - now).total_seconds()))
        raise TooManyRequests(headers={"Retry-After": str(wait)})


def check_rate(session: Session, partner_id: str, kind: str, per_minute: int,
               now: datetime) -> None:
    count, oldest = session.execute(_RATE, {"partner_id": partner_id, "kind": kind,
                                            "since": now - RATE_WINDOW}).one()
    enforce_rate(count, oldest, per_minute, now)


# -- retry and ignore -------------------------------------------------------------------

def check_retryable(status: str, manual_retry_count: int, settings: Settings) -> None:
    if status != NotificationStatus.FAILED:
        raise Conflict(NOT_FAILED)
    if manual_retry_count >= settings.max_manual_retries:
        raise Conflict(MAX_MANUAL.format(n=settings.max_manual_retries))


def fresh_cycle_values(now: datetime, *, due: datetime) -> dict[str, Any]:
    """Seed 000's reset for a manual retry (also an operator's replay): retryAttempts 0,
    latestErrorPayload cleared, a new 30-day cycle, next attempt on the manual lane."""
    return {
        "held": False,
        "retry_attempts": 0,
        "latest_error_payload": None,
        "status": NotificationStatus.PENDING,
        "cycle_started_at": now,
        "next_attempt_at": due,
        "lane": Lane.MANUAL,
        # A lease still held by an automatic attempt in flight is void: its outcome is
        # recorded as an attempt but no longer decides the state.
        "lease_token": None,
        "lease_expires_at": None,
        "updated_at": now,
    }


def start_fresh_cycle(notification: Notification, now: datetime, *, due: datetime) -> None:
    """``fresh_cycle_values`` applied to a loaded notification."""
    for key, value in fresh_cycle_values(now, due=due).items():
        setattr(notification, key, value)


def _repoint_to_current_url(session: Session, notification: Notification,
                            now: datetime) -> Event:
    """Seed 000: merchants fix their URL in the settings, then retry."""
    # One query for both; the caller gets the event back.
    event, url = session.execute(_EVENT_AND_URL, {"event_id": notification.event_id}).one()
    _repoint(session, notification, event, url, now)
    return event


def _repoint(session: Session, notification: Notification, event: Event, url: str | None,
             now: datetime) -> None:
    if event.callback_url or not url or url == notification.url:
        return
    left = notification.endpoint_id
    endpoint_id, sequence = next_sequence(session, notification.partner_id, url, now)
    notification.url = url
    notification.endpoint_id = endpoint_id
    notification.sequence = sequence
    if left is not None and left != endpoint_id:
        # As in manual_retry._repoint: the old queue's next held notification takes over.
        session.flush()
        endpoint_queue.promote_next(session, left, now)


def ignore(session: Session, principal: Principal, notification_id: str,
           now: datetime | None = None) -> Notification:
    """Seed 003 "Ignore notification": out of the retry queue for good."""
    now = now or utcnow()
    try:
        notification = get_notification(session, principal.partner_id, notification_id,
                                        for_update=True)
        if notification.status == NotificationStatus.SENT:
            raise Conflict(ALREADY_SENT)
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
