"""Publishing over the broker, for producers in other services:
``celery.send_task("deliverer.publish_event", kwargs={...})``.

The message is the only copy of the event until its transaction commits, so a transient
database error is retried (with backoff) instead of acked away; and the task is keyed by
its id (or the producer's ``idempotency_key``), so a retry after a commit whose outcome
was unknown, or a redelivery after a worker died between commit and ack, returns the
event already recorded instead of publishing it a second time.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from deliverer.broker import dispatch
from deliverer.config import get_settings
from deliverer.publishing.own_transaction import publish_one

# Backoff 1, 2, 4 ... 60 s (jittered), for up to 20 retries: a database restart or
# failover of several minutes loses nothing; past that the task fails and says so.
MAX_RETRIES = 20
RETRY_BACKOFF_MAX = 60


@shared_task(name=dispatch.PUBLISH_EVENT, bind=True, acks_late=True,
             reject_on_worker_lost=True, ignore_result=True,
             autoretry_for=(OperationalError,), retry_backoff=True,
             retry_backoff_max=RETRY_BACKOFF_MAX, retry_jitter=True, max_retries=MAX_RETRIES)
def publish_event_task(self: Task, partner_id: str, type: str, reference: str,
                  payload: dict[str, Any], callback_url: str | None = None,
                  idempotency_key: str | None = None) -> dict[str, Any]:
    key = idempotency_key or self.request.id
    # retry_for=0: Celery's own retries (with backoff, for minutes) run it again.
    published = publish_one(get_settings(), idempotency_key=key, partner_id=partner_id,
                            type=type, reference=reference, payload=payload,
                            callback_url=callback_url, retry_for=0.0)
    return {"eventId": published.event_id, "notificationId": published.notification_id,
            "status": published.status}
