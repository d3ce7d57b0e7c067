"""The Python entry point for bulk producers: ``publish_events(...)`` (one event:
``deliverer.publish_event``)."""

from __future__ import annotations

from typing import Any

from deliverer.config import get_settings
from deliverer.publishing.own_transaction import publish
from deliverer.publishing.published import Published


def publish_events(partner_id: str, events: list[dict[str, Any]]) -> list[Published]:
    """Bulk: ``events`` are dicts with type, reference, payload and optional callback_url
    and idempotency_key; an event whose key was recorded before is not recorded again
    (``deliverer.publishing.service.record_events``)."""
    return publish(get_settings(), partner_id=partner_id, events=events)
