"""The beat-driven sweep task."""

from __future__ import annotations

from celery import shared_task

from deliverer.config import get_settings
from deliverer.db import session_scope
from deliverer.delivery import endpoint_queue
from deliverer.models import utcnow
from deliverer.scheduling.enqueue import enqueue_batch
from deliverer.scheduling.sweep import collect_due, group_due


@shared_task(name="deliverer.sweep_due", ignore_result=True)
def sweep_due() -> int:
    """Enqueue every notification due within the horizon that has no message yet."""
    settings = get_settings()
    with session_scope() as session:
        endpoint_queue.drain(session, settings, utcnow())
    with session_scope() as session:
        due = collect_due(session, settings)
    for group in group_due(due, settings.delivery_batch_size):
        enqueue_batch(group.notification_ids, group.lane, group.eta)
    return len(due)
