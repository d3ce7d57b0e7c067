"""Celery tasks for delivery: thin wrappers around ``deliverer.delivery.service``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from celery import shared_task

from deliverer.batching import Coalescer
from deliverer.config import get_settings
from deliverer.delivery import batch
from deliverer.logging import delivery_context
from deliverer.models import Lane, utcnow
from deliverer.scheduling.enqueue import enqueue_batch, enqueue_delivery

LOCKED_RETRY = timedelta(milliseconds=500)


def _deliver_together(notification_ids: Sequence[str]) -> list[str]:
    """The delivery messages running at the same moment in this process, as one batch:
    one claim, the POSTs in parallel, one record, then their follow-ups enqueued."""
    outcome = batch.deliver_many(list(dict.fromkeys(notification_ids)), get_settings())
    _enqueue_follow_ups(outcome)
    return [outcome.status_of(nid) for nid in notification_ids]


# Up to a delivery batch of messages per run; two runners, so that one batch is in the
# database while the next is collected or sent.
_TOGETHER: Coalescer[str, str] = Coalescer("deliver", _deliver_together, max_batch=50,
                                           runners=2)


@shared_task(name="deliverer.deliver", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver(notification_id: str) -> str:
    """Attempt one delivery. Safe to run twice: the claim lets only one POST through.

    A message that finds the process idle runs alone, at once. Under a backlog (a burst
    of single publishes), the messages running at the same moment are claimed, sent and
    recorded together (``deliver_many``'s path); each returns, and is acknowledged, only
    once its own attempt is recorded."""
    with delivery_context(notification_id):
        return _TOGETHER.submit(notification_id)


@shared_task(name="deliverer.deliver_many", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_many(notification_ids: list[str]) -> int:
    """Attempt a batch of deliveries (bulk publishes, sweeps of a backlog)."""
    outcome = batch.deliver_many(notification_ids, get_settings())
    _enqueue_follow_ups(outcome)
    return outcome.sent


def _enqueue_follow_ups(outcome: batch.BatchOutcome) -> None:
    """After the batch's commit: next attempts due soon, early messages, locked rows, and
    the jobs handed back unsent."""
    for nxt in outcome.following:
        enqueue_delivery(nxt.notification_id, nxt.lane, nxt.due_at)
    horizon = get_settings().sweep_horizon
    for notification_id, lane, due_at in outcome.not_due:
        if (due_at - utcnow()).total_seconds() <= horizon:
            enqueue_delivery(notification_id, lane, due_at)
    if outcome.locked:
        enqueue_batch(outcome.locked, Lane.RETRY, utcnow() + LOCKED_RETRY)
    # Claimable again at once (their leases were given back): another batch, now, on the
    # queue each came from, so a first attempt does not wait behind the retry backlog.
    by_lane: dict[str, list[str]] = {}
    for notification_id, lane in outcome.unsent:
        by_lane.setdefault(lane, []).append(notification_id)
    for lane, ids in by_lane.items():
        enqueue_batch(ids, lane)
