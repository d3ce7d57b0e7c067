"""deliverer: a webhook delivery pipeline.

``deliverer.publish_event(partner_id, type, reference, payload, callback_url=None,
idempotency_key=None)`` records an event and queues its webhook;
``deliverer.publish_events(partner_id, events)`` records several in one transaction.
"""

from __future__ import annotations

from typing import Any

__all__ = ["publish_event", "publish_events"]


def publish_event(partner_id: str, type: str, reference: str, payload: dict[str, Any],
                  callback_url: str | None = None, *,
                  idempotency_key: str | None = None) -> Any:
    """Record an event for a partner and queue its webhook; returns the ids.

    With an ``idempotency_key``, calling it again with the same key (say after an error
    whose commit may have happened) returns the event first recorded."""
    # Imported here so that ``import deliverer`` stays free of side effects and cheap.
    from deliverer.celery_app import producing
    from deliverer.config import get_settings
    from deliverer.publishing.own_transaction import publish_one

    with producing():  # its messages go to deliverer's broker, whatever app is current
        return publish_one(get_settings(), partner_id=partner_id, type=type,
                           reference=reference, payload=payload, callback_url=callback_url,
                           idempotency_key=idempotency_key)


def publish_events(partner_id: str, events: list[dict[str, Any]]) -> Any:
    """Bulk: ``events`` are dicts with type, reference, payload and optional callback_url
    and idempotency_key, recorded in one transaction; an event whose key was recorded
    before is not recorded again. Returns the ids of each."""
    from deliverer.celery_app import producing
    from deliverer.publishing.api import publish_events as publish_all

    with producing():
        return publish_all(partner_id, events)
