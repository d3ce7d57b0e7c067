"""The rows a publish writes: its events and their notifications, in as few round trips
as the database allows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert

from deliverer import outbox
from deliverer.delivery.troubleshooting import WEBHOOKS_TURNED_OFF, FailureKind, error_payload
from deliverer.models import (
    Event,
    Lane,
    Notification,
    NotificationStatus,
    not_receiving_webhooks,
    table_of,
)
from deliverer.models.base import new_id
from deliverer.publishing.envelope import NewEvent

_EVENTS = table_of(Event)
_NOTIFICATIONS = table_of(Notification)
# One event and its one notification (a single publish to one endpoint, the common case)
# in one statement on PostgreSQL: the event is inserted by a data-modifying CTE, and the
# notification's foreign key is checked at the end of the statement, once both exist.
_ONE_AND_ONE = (
    insert(_NOTIFICATIONS)
    .values({c.name: bindparam(f"n_{c.name}", type_=c.type) for c in _NOTIFICATIONS.c})
    .add_cte(insert(_EVENTS)
             .values({c.name: bindparam(f"e_{c.name}", type_=c.type) for c in _EVENTS.c})
             .cte("new_event"))
)


def write_rows(connection: Connection, event_rows: list[dict[str, Any]],
          notification_rows: list[dict[str, Any]]) -> None:
    """INSERT the rows: table-level statements, none of the ORM's bulk machinery."""
    if (len(event_rows) == 1 and len(notification_rows) == 1
            and connection.dialect.name == "postgresql"):
        params = {f"e_{k}": v for k, v in event_rows[0].items()}
        params.update((f"n_{k}", v) for k, v in notification_rows[0].items())
        connection.execute(_ONE_AND_ONE, params)
        return
    connection.execute(insert(_EVENTS), event_rows)
    connection.execute(insert(_NOTIFICATIONS), notification_rows)


def event_row(event: NewEvent, body: str, idempotency_key: str | None) -> dict[str, Any]:
    return {"id": event.id, "partner_id": event.partner_id, "type": event.type,
            "reference": event.reference, "payload": event.payload,
            "callback_url": event.callback_url, "body": body,
            "created_at": event.created_at, "idempotency_key": idempotency_key}


# Why an event's one notification is NOT_SENT when it has nowhere to go.
NO_URL = "No webhook URL configured"


def not_pushed(active: bool, flow: str, settings_enabled: bool | None) -> dict[str, Any]:
    """The NOT_SENT payload of an event for a partner sent no webhooks: inactive or
    polling, turned off in its settings, or without settings (so without a URL). All were
    no_url, whose hint says to set a URL (a black-box try: a merchant that had turned
    webhooks off was told that)."""
    reason = not_receiving_webhooks(active, flow)
    if reason is not None:
        return error_payload(FailureKind.NOT_A_WEBHOOK_PARTNER, reason)
    if settings_enabled is False:
        return error_payload(FailureKind.WEBHOOKS_DISABLED, WEBHOOKS_TURNED_OFF)
    return error_payload(FailureKind.NO_URL, NO_URL)


def no_subscriber(event_type: str) -> str:
    return f"No endpoint is subscribed to event type {event_type}"


def notification_row(partner_id: str, event_id: str, url: str | None,
                      now: datetime) -> dict[str, Any]:
    """A NOT_SENT notification row with nothing attempted; a deliverable one is then made
    PENDING and due now."""
    return {
        "id": new_id(), "partner_id": partner_id, "event_id": event_id, "url": url,
        "endpoint_id": None, "sequence": None, "status": NotificationStatus.NOT_SENT,
        "retry_attempts": 0, "manual_retry_count": 0, "attempt_count": 0,
        "latest_error_payload": None, "next_attempt_at": None, "cycle_started_at": now,
        "sent_at": None, "lane": Lane.FIRST, "held": False, "lease_token": None,
        "lease_expires_at": None, "scheduled_for": None, "enqueued_at": None,
        "created_at": now, "updated_at": now,
    }


def made_pending(now: datetime) -> dict[str, Any]:
    """What makes a ``notification_row`` deliverable: PENDING, due now, its message (or
    its endpoint's wake-up) on its way."""
    return {"status": NotificationStatus.PENDING, "next_attempt_at": now,
            **outbox.handed_over(now, now)}
