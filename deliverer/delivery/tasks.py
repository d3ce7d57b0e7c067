"""Celery tasks for delivery: thin wrappers around ``deliverer.delivery.together``,
``deliverer.delivery.batch``, ``deliverer.delivery.wakeups.wakes_together`` and ``wake_groups``; the
messages their outcomes call for are ``follow_up``'s."""

from __future__ import annotations

from collections.abc import Callable

from celery import shared_task

from deliverer.broker import dispatch
from deliverer.config import Settings, get_settings
from deliverer.delivery import batch, follow_up, together
from deliverer.delivery.wakeups import wake_groups, wakes_together
from deliverer.logging import delivery_context


@shared_task(name=dispatch.DELIVER, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver(notification_id: str) -> str:
    """Attempt one delivery. Safe to run twice: the claim lets only one POST through.
    Its claim and record are shared with the messages running beside it (together.py)."""
    settings = get_settings()
    with delivery_context(notification_id):
        outcome = together.deliver(notification_id, settings)
    follow_up.after_one(notification_id, outcome, settings)
    return str(outcome.status or outcome.state)


@shared_task(name=dispatch.DELIVER_MANY, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_many(notification_ids: list[str]) -> int:
    """Attempt a batch of deliveries (bulk publishes, sweeps of a backlog)."""
    return _run(lambda settings: batch.deliver_many(notification_ids, settings))


@shared_task(name=dispatch.DELIVER_DUE, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_due(endpoint_id: int) -> int:
    """An endpoint's wake-up: attempt its due first attempts, a batch at a time."""
    return _run(lambda settings: wakes_together.deliver_due(endpoint_id, settings))


@shared_task(name=dispatch.DELIVER_GROUP, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_group(group_id: int) -> int:
    """A group's wake-up: attempt its endpoints' due first attempts, a batch at a time."""
    return _run(lambda settings: wake_groups.deliver_group(group_id, settings))


def _run(deliver: Callable[[Settings], batch.BatchOutcome]) -> int:
    settings = get_settings()
    outcome = deliver(settings)
    follow_up.after_batch(outcome, settings)
    return outcome.sent
