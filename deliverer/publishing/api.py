"""The Python entry point for producers: ``deliverer.publish_event(...)``."""

from __future__ import annotations

from typing import Any

from deliverer.config import get_settings
from deliverer.publishing.service import Published, publish_and_commit, publish_one_and_commit


def publish_event(partner_id: str, type: str, reference: str, payload: dict[str, Any],
                  callback_url: str | None = None, *,
                  idempotency_key: str | None = None) -> Published:
    """Record an event for a partner and queue its webhook; returns the ids.

    With an ``idempotency_key``, calling it again with the same key (say after an error
    whose commit may have happened) returns the event first recorded."""
    return publish_one_and_commit(get_settings(), partner_id=partner_id, type=type,
                                  reference=reference, payload=payload,
                                  callback_url=callback_url, idempotency_key=idempotency_key)


def publish_events(partner_id: str, events: list[dict[str, Any]]) -> list[Published]:
    """Bulk: ``events`` are dicts with type, reference, payload and optional callback_url
    and idempotency_key; an event whose key was recorded before is not recorded again
    (``deliverer.publishing.service.publish_events``)."""
    return publish_and_commit(get_settings(), partner_id=partner_id, events=events)
