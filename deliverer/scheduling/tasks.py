"""The beat-driven sweep task."""

from __future__ import annotations

import logging

from celery import shared_task

from deliverer.broker import dispatch, sqla_broker
from deliverer.broker.dispatch import enqueue_batch, enqueue_resend
from deliverer.config import get_settings
from deliverer.db import session_scope
from deliverer.delivery import endpoint_queue
from deliverer.delivery.recording import auto_disable
from deliverer.models import utcnow
from deliverer.scheduling.sweep import (
    collect_due,
    collect_lost_resends,
    expire_old_resends,
    group_due,
)

log = logging.getLogger(__name__)


@shared_task(name="deliverer.repair_queues", ignore_result=True)
def repair_queues() -> int:
    """Release endpoint queues that nothing else would (endpoint_queue.repair)."""
    with session_scope() as session:
        repaired = endpoint_queue.repair(session, utcnow())
    if repaired:
        log.warning("%d endpoint queue(s) held with nothing to release them: released",
                    repaired)
    return repaired


@shared_task(name="deliverer.disable_failing_endpoints", ignore_result=True)
def disable_failing_endpoints() -> int:
    """Disable endpoints that have failed without a break for auto_disable_after, whether
    or not an attempt is being recorded for them (auto_disable.sweep)."""
    with session_scope() as session:
        disabled = auto_disable.sweep(session, get_settings(), utcnow())
    if disabled:
        log.warning("%d endpoint(s) failing for too long: disabled", disabled)
    return disabled


@shared_task(name="deliverer.prune_broker", ignore_result=True)
def prune_broker() -> int:
    """Delete the messages kombu's SQLAlchemy broker has handed out (sqla_broker)."""
    settings = get_settings()
    if not settings.broker_is_sqla:
        return 0
    return sqla_broker.prune_consumed(settings.broker_url)


@shared_task(name=dispatch.SWEEP_DUE, ignore_result=True)
def sweep_due() -> int:
    """Enqueue every notification due within the horizon that has no message yet, and
    every resend request that was lost on its way; returns the number of notifications."""
    settings = get_settings()
    with session_scope() as session:
        endpoint_queue.drain(session, settings, utcnow())
    with session_scope() as session:
        due = collect_due(session, settings)
    for group in group_due(due, settings.delivery_batch_size):
        enqueue_batch(group.notification_ids, group.lane, group.eta)
    with session_scope() as session:
        now = utcnow()  # one bound for both: a row is recovered or expired, never both
        resends = collect_lost_resends(session, settings, now=now)
        expired = expire_old_resends(session, settings, now=now)
    if expired:
        log.warning("%d resend request(s) still open a day after they were made: "
                    "marked EXPIRED, not sent again", expired)
    if resends:
        log.warning("%d resend request(s) lost on the way (broker down, worker died): "
                    "enqueued again", len(resends))
    for request_id in resends:
        enqueue_resend(request_id)
    return len(due)
