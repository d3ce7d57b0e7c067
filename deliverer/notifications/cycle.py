"""A notification's state transitions on a merchant's or an operator's request, each
written once: when it may be retried, its fresh cycle, and its repointing to the
partner's current webhook URL (seeds 000 and 003)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.delivery import endpoint_queue
from deliverer.errors import Conflict
from deliverer.models import (
    Endpoint,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    WebhookSettings,
    table_of,
)
from deliverer.partners.endpoints import next_sequence

NOT_FAILED = "Notification is not in FAILED status"
MAX_MANUAL = "Partner webhook notification has reached the maximum number of manual retries ({n})"
ALREADY_SENT = "Notification has already been delivered"

_NOTIFICATIONS = table_of(Notification)
_REPOINT = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == bindparam("nid"))
    .values(url=bindparam("url"), endpoint_id=bindparam("endpoint_id"),
            sequence=bindparam("sequence"))
)


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


def repoint(session: Session, *, notification_id: str, partner_id: str, url: str | None,
            endpoint_id: int | None, callback_url: str | None, current_url: str | None,
            now: datetime) -> tuple[str, int, int] | None:
    """Seed 000: merchants fix their URL in the settings, then retry. Sends the
    notification to ``current_url`` (the partner's setting) from now on, under a new
    sequence number of that endpoint; an event with a callback URL of its own keeps it,
    and so does a notification of a registered endpoint other than the default (whose URL
    is the setting): the merchant moves that one with
    PATCH /api/partner/v2/endpoints/{id}, which moves what it holds along.
    Returns the new (url, endpoint id, sequence), or None when nothing changed."""
    if callback_url or not current_url or current_url == url:
        return None
    if endpoint_id is not None and session.scalar(
            select(Endpoint.id).where(Endpoint.id == endpoint_id,
                                      Endpoint.registered.is_(True),
                                      Endpoint.is_default.is_(False))):
        return None
    new_endpoint_id, sequence = next_sequence(session, partner_id, current_url, now)
    session.connection().execute(_REPOINT, {"nid": notification_id, "url": current_url,
                                            "endpoint_id": new_endpoint_id,
                                            "sequence": sequence})
    if endpoint_id is not None and endpoint_id != new_endpoint_id:
        # It may have been the head of the old endpoint's queue: the next one held behind
        # it takes its place, or nothing would ever release them.
        endpoint_queue.promote_next(session, endpoint_id, now)
    return current_url, new_endpoint_id, sequence


# A notification's event's callback URL and the partner's current webhook URL.
_URLS = (
    select(Event.callback_url, WebhookSettings.url)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == Event.partner_id)
    .where(Event.id == bindparam("event_id"))
)


def repoint_to_current_url(session: Session, notification: Notification,
                           now: datetime) -> None:
    """``repoint`` of a loaded notification."""
    callback_url, current_url = session.execute(
        _URLS, {"event_id": notification.event_id}).one()
    moved = repoint(session, notification_id=notification.id,
                    partner_id=notification.partner_id, url=notification.url,
                    endpoint_id=notification.endpoint_id, callback_url=callback_url,
                    current_url=current_url, now=now)
    if moved is not None:
        notification.url, notification.endpoint_id, notification.sequence = moved
