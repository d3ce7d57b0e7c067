"""deliverer: a webhook delivery pipeline.

``deliverer.publish_event(partner_id, type, reference, payload, callback_url=None,
idempotency_key=None)`` records an event and queues its webhook.
"""

from __future__ import annotations

from typing import Any

__all__ = ["publish_event"]


def publish_event(partner_id: str, type: str, reference: str, payload: dict[str, Any],
                  callback_url: str | None = None, *,
                  idempotency_key: str | None = None) -> Any:
    """Record an event for a partner and queue its webhook; returns the ids.

    With an ``idempotency_key``, calling it again with the same key (say after an error
    whose commit may have happened) returns the event first recorded."""
    # Imported here so that ``import deliverer`` stays free of side effects and cheap.
    from deliverer.config import get_settings
    from deliverer.publishing.service import publish_one

    return publish_one(get_settings(), partner_id=partner_id, type=type, reference=reference,
                       payload=payload, callback_url=callback_url,
                       idempotency_key=idempotency_key)
