"""Celery tasks for delivery: thin wrappers around ``deliverer.delivery.together``,
``deliverer.delivery.batch``, ``deliverer.delivery.wake`` and ``wake_groups``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from celery import shared_task

from deliverer import outbox
from deliverer.broker import dispatch
from deliverer.broker.dispatch import enqueue_batch, enqueue_delivery
from deliverer.config import Settings, get_settings
from deliverer.delivery import batch, together, wake, wake_groups
from deliverer.delivery.claim import ClaimState
from deliverer.logging import delivery_context
from deliverer.models import Lane, utcnow

LOCKED_RETRY = timedelta(milliseconds=500)


@shared_task(name=dispatch.DELIVER, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver(notification_id: str) -> str:
    """Attempt one delivery. Safe to run twice: the claim lets only one POST through.
    Its claim and record are shared with the messages running beside it (together.py)."""
    settings = get_settings()
    with delivery_context(notification_id):
        outcome = together.deliver(notification_id, settings)
    if outcome.next_attempt is not None:
        nxt = outcome.next_attempt
        enqueue_delivery(nxt.notification_id, nxt.lane, nxt.due_at)
    elif (outcome.state == ClaimState.NOT_DUE and outcome.due_at is not None
          and outbox.hands_over(settings, outcome.due_at, utcnow())):
        # This message arrived before its row was due (a stale or early message). Come
        # back at the due time if that is near; otherwise the sweep will.
        enqueue_delivery(notification_id, Lane.RETRY, outcome.due_at)
    elif outcome.state == ClaimState.LOCKED:
        # Row-locked by a short transaction (a merchant's request, the sweep), not leased
        # by a worker: dropping the message would leave it to the sweep's lost-message
        # grace. Come back in a moment instead.
        enqueue_delivery(notification_id, Lane.RETRY, utcnow() + LOCKED_RETRY)
    return str(outcome.status or outcome.state)


@shared_task(name=dispatch.DELIVER_MANY, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_many(notification_ids: list[str]) -> int:
    """Attempt a batch of deliveries (bulk publishes, sweeps of a backlog)."""
    settings = get_settings()
    outcome = batch.deliver_many(notification_ids, settings)
    _follow_up(outcome, settings)
    return outcome.sent


@shared_task(name=dispatch.DELIVER_DUE, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_due(endpoint_id: int) -> int:
    """An endpoint's wake-up: attempt its due first attempts, a batch at a time."""
    return _woken(wake.deliver_due, endpoint_id)


@shared_task(name=dispatch.DELIVER_GROUP, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_group(group_id: int) -> int:
    """A group's wake-up: attempt its endpoints' due first attempts, a batch at a time."""
    return _woken(wake_groups.deliver_group, group_id)


def _woken(deliver: Callable[[int, Settings], batch.BatchOutcome], target: int) -> int:
    settings = get_settings()
    outcome = deliver(target, settings)
    _follow_up(outcome, settings)
    return outcome.sent


def _follow_up(outcome: batch.BatchOutcome, settings: Settings) -> None:
    """The messages a batch's outcome calls for, once it is recorded."""
    for nxt in outcome.following:
        enqueue_delivery(nxt.notification_id, nxt.lane, nxt.due_at)
    for notification_id, lane, due_at in outcome.not_due:
        if outbox.hands_over(settings, due_at, utcnow()):
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
