"""ORM rows to the plain dicts the response schemas dump."""

from __future__ import annotations

from typing import Any

from deliverer.models import Attempt, Event, Notification


def notification(n: Notification, event: Event) -> dict[str, Any]:
    return {
        "id": n.id,
        "event_id": n.event_id,
        "event_type": event.type,
        "reference": event.reference,
        "status": n.status,
        "url": n.url,
        "sequence": n.sequence,
        "retry_attempts": n.retry_attempts,
        "manual_retry_count": n.manual_retry_count,
        "attempt_count": n.attempt_count,
        "latest_error_payload": n.latest_error_payload,
        "next_attempt_at": n.next_attempt_at,
        "cycle_started_at": n.cycle_started_at,
        "sent_at": n.sent_at,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
    }


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
