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
    # Imported here so that ``import deliverer`` stays free of side effects and cheap.
    from deliverer.publishing.api import publish_event as _publish

    return _publish(partner_id, type, reference, payload, callback_url,
                    idempotency_key=idempotency_key)
