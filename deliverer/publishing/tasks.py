"""Publishing over the broker, for producers in other services:
``celery.send_task("deliverer.publish_event", kwargs={...})``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from deliverer.publishing.api import publish_event as _publish


@shared_task(name="deliverer.publish_event", acks_late=True, ignore_result=False)
def publish_event(partner_id: str, type: str, reference: str, payload: dict[str, Any],
                  callback_url: str | None = None) -> dict[str, Any]:
    published = _publish(partner_id, type, reference, payload, callback_url)
    return {"eventId": published.event_id, "notificationId": published.notification_id,
            "status": published.status}
