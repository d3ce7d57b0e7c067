"""The Python entry point for producers: ``deliverer.publish_event(...)``."""

from __future__ import annotations

from typing import Any

from deliverer.config import get_settings
from deliverer.db import in_transaction, is_transient_abort
from deliverer.publishing.service import Published, publish_event_once
from deliverer.publishing.service import publish_event as _publish_event
from deliverer.publishing.service import publish_events as _publish_events

# How long a publish a deadlock aborted is run again (a worker recording an attempt can
# hold the endpoint row its sequence number comes from).
ABORT_RETRY_FOR = 2.0


def publish_event(partner_id: str, type: str, reference: str, payload: dict[str, Any],
                  callback_url: str | None = None, *,
                  idempotency_key: str | None = None) -> Published:
    """Record an event for a partner and queue its webhook; returns the ids.

    With an ``idempotency_key``, calling it again with the same key (say after an error
    whose commit may have happened) returns the event first recorded."""
    if idempotency_key is not None:
        return publish_event_once(get_settings(), idempotency_key=idempotency_key,
                                  partner_id=partner_id, type=type, reference=reference,
                                  payload=payload, callback_url=callback_url)
    # Without a key, only an abort that certainly rolled everything back is run again.
    return in_transaction(
        lambda session: _publish_event(session, get_settings(), partner_id=partner_id,
                                       type=type, reference=reference, payload=payload,
                                       callback_url=callback_url),
        retry_for=ABORT_RETRY_FOR, only_if=is_transient_abort)


def publish_events(partner_id: str, events: list[dict[str, Any]]) -> list[Published]:
    """Bulk: ``events`` are dicts with type, reference, payload and optional callback_url
    and idempotency_key; an event whose key was recorded before is not recorded again
    (``deliverer.publishing.service.publish_events``)."""
    return in_transaction(
        lambda session: _publish_events(session, get_settings(), partner_id=partner_id,
                                        events=events),
        retry_for=ABORT_RETRY_FOR, only_if=is_transient_abort)
