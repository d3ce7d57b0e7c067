"""Delivering one notification: claim it, POST it, record what happened.

Three short steps, never a transaction open across the HTTP call:

1. ``claim`` (``claim.py``): a conditional UPDATE takes a lease on the row (on
   PostgreSQL after ``SELECT ... FOR UPDATE SKIP LOCKED``). Only one worker can hold
   it, so a duplicate broker message, a second beat or a redelivered task results in
   no second POST.
2. ``perform`` (``perform.py``, ``sender.py``): the HTTP POST, signed, with timeouts and
   a size cap.
3. ``record`` (``record.py``, ``success.py``, ``failure.py``): the attempt row and the
   notification's new state in one transaction; on failure the ladder gives the next
   attempt time.

Batches of notifications take the same steps together (``batch.py``).
"""

from __future__ import annotations

import json
import logging

from deliverer.config import Settings
from deliverer.db import in_transaction, session_scope
from deliverer.delivery import slow_lane
from deliverer.delivery.claim import ClaimState, claim
from deliverer.delivery.outcome import AttemptOutcome
from deliverer.delivery.perform import perform, perform_admitted
from deliverer.delivery.record import record

log = logging.getLogger(__name__)

# The three steps, and ``deliver`` that runs them.
__all__ = ["AttemptOutcome", "ClaimState", "claim", "deliver", "perform", "record"]


def deliver(notification_id: str, settings: Settings) -> AttemptOutcome:
    """Claim, send and record one attempt, each database step in its own transaction."""
    with session_scope() as session:
        claimed = claim(session, notification_id, settings)
    if claimed.job is None:
        return AttemptOutcome(claimed.state, due_at=claimed.due_at)
    job = claimed.job
    ticket = slow_lane.GATE.admit(slow_lane.key_for(job.endpoint_id, job.url), settings)
    if ticket is None:
        until = in_transaction(
            lambda session: slow_lane.defer(session, [notification_id], job.lease_token,
                                            settings),
            retry_for=settings.lease_seconds)
        return AttemptOutcome(ClaimState.DEFERRED, due_at=until)
    result = perform_admitted(job, ticket, settings)
    # The POST happened: record it even if the first try is a deadlock victim or meets a
    # database restart, or the webhook is sent again when the lease runs out.
    outcome = in_transaction(lambda session: record(session, job, result, settings),
                             retry_for=settings.lease_seconds)
    log.info(
        "attempt %s: %s",
        "delivered" if result.success else "failed",
        json.dumps(result.error) if result.error else result.status_code,
        extra={"notification_id": notification_id},
    )
    return outcome
