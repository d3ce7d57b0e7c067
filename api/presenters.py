"""ORM rows to the plain dicts the response schemas dump."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deliverer.models import Alert, Attempt, Endpoint, Event, Notification, WebhookSettings

# A notification's own fields in the response, after its id, event id, type and reference.
_FIELDS = ("status", "url", "sequence", "retry_attempts", "manual_retry_count",
           "attempt_count", "latest_error_payload", "next_attempt_at", "held",
           "cycle_started_at", "sent_at", "created_at", "updated_at")


def notification(n: Notification, event: Event, endpoint_id: str | None = None
                 ) -> dict[str, Any]:
    """``endpoint_id``: the public id of the endpoint it is numbered on."""
    return {"id": n.id, "event_id": n.event_id, "event_type": event.type,
            "reference": event.reference, "endpoint_id": endpoint_id,
            **{f: getattr(n, f) for f in _FIELDS}}


def notification_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The same from a row of the notification's columns with its event's ``type`` and
    ``reference`` and its endpoint's ``endpoint_public_id`` (what a manual retry's batch
    reads)."""
    return {"id": row["id"], "event_id": row["event_id"], "event_type": row["type"],
            "reference": row["reference"], "endpoint_id": row.get("endpoint_public_id"),
            **{f: row[f] for f in _FIELDS}}


def attempt(a: Attempt) -> dict[str, Any]:
    return {
        "id": a.id,
        "trigger": a.trigger,
        "url": a.url,
        "started_at": a.started_at,
        "duration_ms": a.duration_ms,
        "success": a.success,
        "response_status": a.response_status,
        "response_body": a.response_body,
        "error_payload": a.error_payload,
    }


def endpoint(e: Endpoint, *, secret: str | None = None) -> dict[str, Any]:
    """A registered endpoint as the partner API shows it; its signing secret only when
    ``secret`` is given (created, rotated)."""
    body: dict[str, Any] = {
        "id": e.public_id, "url": e.url, "description": e.description,
        "event_types": e.subscriptions, "enabled": e.disabled_at is None,
        "rate_limit": e.rate_limit, "status": e.status.value,
        "disabled_reason": e.disabled_reason, "failing_since": e.failing_since,
        "is_default": e.is_default, "created_at": e.created_at,
    }
    if secret is not None:
        body["signing_secret"] = secret
    return body


def alert(a: Alert, endpoint_id: str | None) -> dict[str, Any]:
    """``endpoint_id``: the endpoint's public id (its row id means nothing to a merchant)."""
    return {"id": a.id, "kind": a.kind, "message": a.message, "endpoint_id": endpoint_id,
            "notification_id": a.notification_id, "created_at": a.created_at,
            "emailed_at": a.emailed_at, "email_error": a.email_error}


def webhook_settings(row: WebhookSettings, default: Endpoint | None) -> dict[str, Any]:
    """The settings with the state of the endpoint their URL is (``default``): a 410 Gone
    or days of failures disable it while the settings still say enabled."""
    return {"url": row.url, "enabled": row.enabled, "alert_email": row.alert_email,
            "signing_secret": row.signing_secret,
            "previous_secret_expires_at": row.previous_secret_expires_at,
            "updated_at": row.updated_at,
            "endpoint_id": default.public_id if default is not None else None,
            "endpoint_status": default.status if default is not None else None,
            "disabled_reason": default.disabled_reason if default is not None else None}
