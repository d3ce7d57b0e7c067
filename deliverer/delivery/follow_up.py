"""The messages a delivery's outcome calls for, sent once it is recorded (after the
commit): the next attempt within the sweep's horizon (``outbox``), a message that came
before its row was due, a row another transaction had locked, jobs handed back unsent.
The delivery tasks call these after their service; nothing else here decides."""

from __future__ import annotations

from datetime import timedelta

from deliverer import outbox
from deliverer.broker.dispatch import enqueue_batch, enqueue_delivery
from deliverer.config import Settings
from deliverer.delivery.batch import BatchOutcome
from deliverer.delivery.claim import ClaimState
from deliverer.delivery.recording.outcome import AttemptOutcome
from deliverer.models import Lane, utcnow

# A row locked by a short transaction (a merchant's request, the sweep) is tried again
# this soon.
LOCKED_RETRY = timedelta(milliseconds=500)


def after_one(notification_id: str, outcome: AttemptOutcome, settings: Settings) -> None:
    """After one notification's delivery (``together.deliver``)."""
    if outcome.next_attempt is not None:
        nxt = outcome.next_attempt
        enqueue_delivery(nxt.notification_id, nxt.lane, nxt.due_at)
    elif (outcome.state == ClaimState.NOT_DUE and outcome.due_at is not None
          and outbox.hands_over(settings, outcome.due_at, utcnow())):
        # This message arrived before its row was due (a stale or early message). Come
        # back at the due time if that is near; otherwise the sweep will.
        enqueue_delivery(notification_id, Lane.RETRY, outcome.due_at)
    elif outcome.state == ClaimState.LOCKED:
        # Row-locked by a short transaction, not leased by a worker: dropping the
        # message would leave it to the sweep's lost-message grace. Back in a moment.
        enqueue_delivery(notification_id, Lane.RETRY, utcnow() + LOCKED_RETRY)


def after_batch(outcome: BatchOutcome, settings: Settings) -> None:
    """After a batch's deliveries (``batch.deliver_many``, the wake-ups)."""
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
