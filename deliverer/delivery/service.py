"""Delivering one notification: claim it, POST it, record what happened.

Three short steps, never a transaction open across the HTTP call:

1. ``claim`` (``claim.py``): a conditional UPDATE takes a lease on the row (on
   PostgreSQL after ``SELECT ... FOR UPDATE SKIP LOCKED``). Only one worker can hold
   it, so a duplicate broker message, a second beat or a redelivered task results in
   no second POST.
2. ``perform`` (``sending/perform.py``, ``sending/sender.py``): the HTTP POST, signed,
   with timeouts and a size cap.
3. ``record`` (``recording/record.py``, ``success.py``, ``failure.py``): the attempt row
   and the notification's new state in one transaction; on failure the ladder gives the
   next attempt time.

Batches of notifications take the same steps together (``batch.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from deliverer.config import Settings
from deliverer.db import in_transaction, session_scope
from deliverer.delivery.claim import Claim, ClaimState, DeliveryJob, claim
from deliverer.delivery.recording.outcome import AttemptOutcome
from deliverer.delivery.recording.record import log_attempt, record
from deliverer.delivery.sending import slow_lane
from deliverer.delivery.sending.perform import perform, perform_admitted
from deliverer.delivery.sending.sender import SendResult

log = logging.getLogger(__name__)

# The three steps, and ``deliver`` that runs them.
__all__ = ["AttemptOutcome", "ClaimState", "claim", "deliver", "perform", "record",
           "run_steps"]


ClaimStep = Callable[[str], Claim]
RecordStep = Callable[[DeliveryJob, SendResult], AttemptOutcome]


def deliver(notification_id: str, settings: Settings) -> AttemptOutcome:
    """Claim, send and record one attempt, each database step in its own transaction."""

    def claim_alone(nid: str) -> Claim:
        with session_scope() as session:
            return claim(session, nid, settings)

    def record_alone(job: DeliveryJob, result: SendResult) -> AttemptOutcome:
        # The POST happened: record it even if the first try is a deadlock victim or
        # meets a database restart, or the webhook is sent again when the lease runs out.
        return in_transaction(lambda session: record(session, job, result, settings),
                              retry_for=settings.lease_seconds)

    return run_steps(notification_id, settings, claim_alone, record_alone)


def run_steps(notification_id: str, settings: Settings, claim_step: ClaimStep,
              record_step: RecordStep) -> AttemptOutcome:
    """The three steps with the given claim and record (alone here, or shared with the
    messages running beside it: ``together.py``), the slow lane between them."""
    claimed = claim_step(notification_id)
    if claimed.job is None:
        return AttemptOutcome(claimed.state, due_at=claimed.due_at)
    job = claimed.job
    ticket = slow_lane.GATE.admit(slow_lane.key_for(job.endpoint_id, job.url), settings)
    if ticket is None:
        until = in_transaction(
            lambda session: slow_lane.defer(session, [notification_id], job.lease_token,
                                            settings, lease_expires_at=job.lease_expires_at),
            retry_for=settings.lease_seconds)
        return AttemptOutcome(ClaimState.DEFERRED, due_at=until)
    result = perform_admitted(job, ticket, settings)
    outcome = record_step(job, result)
    log_attempt(notification_id, result)
    return outcome
