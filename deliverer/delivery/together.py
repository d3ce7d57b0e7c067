"""One delivery per message, its database steps shared with the messages running beside it.

``service.deliver``'s three steps, for the ``deliverer.deliver`` task, with the two
database steps group-committed across the worker's task threads
(``deliverer.batching.Coalescer``): the claims of the messages that arrive while a claim
is in the database are taken together in one transaction (``batch.claim_many``), and the
outcomes written together in one (``batch.record_many``). A message that finds the
process idle has its claim and record run at once, alone: no added wait.

The POST stays in the task's own thread. A slow endpoint so holds only the threads
sending to it (and the slow lane caps those), never another endpoint's delivery: a
batch that waited for all its POSTs before recording any would make every endpoint
wait for the slowest one in it.
"""

from __future__ import annotations

from collections.abc import Sequence

from deliverer.batching import Coalescer
from deliverer.config import Settings, get_settings
from deliverer.db import session_scope
from deliverer.delivery.batch import claim_many, record_outcomes
from deliverer.delivery.claim import Claim, ClaimState, DeliveryJob
from deliverer.delivery.recording.outcome import AttemptOutcome, NextAttempt
from deliverer.delivery.sending import sender
from deliverer.delivery.service import run_steps
from deliverer.models import NotificationStatus

# A claim or record batch holds at most this many rows; two runners each, so one batch
# can be in the database while the next is collected.
MAX_BATCH = 64
RUNNERS = 2


def _claim_together(ids: Sequence[str]) -> list[Claim]:
    settings = get_settings()
    with session_scope() as session:
        batch = claim_many(session, list(dict.fromkeys(ids)), settings)
    jobs = {job.notification_id: job for job in batch.jobs}
    not_due = {nid: due for nid, _lane, due in batch.not_due}
    locked = set(batch.locked)
    claims: list[Claim] = []
    for nid in ids:
        if nid in jobs:
            claims.append(Claim(ClaimState.CLAIMED, job=jobs.pop(nid)))
        elif nid in not_due:
            claims.append(Claim(ClaimState.NOT_DUE, due_at=not_due[nid]))
        elif nid in locked:
            claims.append(Claim(ClaimState.LOCKED))
        else:  # final, disabled endpoint, leased elsewhere, a duplicate message, missing
            claims.append(Claim(ClaimState.FINAL))
    return claims


def _record_together(done: Sequence[tuple[DeliveryJob, sender.SendResult]]
                     ) -> list[NextAttempt | None]:
    settings = get_settings()
    # By endpoint: concurrent record batches lock failing endpoints in one order.
    ordered = sorted(done, key=lambda item: (item[0].endpoint_id or 0,
                                             item[0].notification_id))
    following = record_outcomes(ordered, settings)
    by_id = {nxt.notification_id: nxt for nxt in following}
    return [by_id.get(job.notification_id) for job, _ in done]


_CLAIMS: Coalescer[str, Claim] = Coalescer("claim", _claim_together, MAX_BATCH, RUNNERS)
_RECORDS: Coalescer[tuple[DeliveryJob, sender.SendResult], NextAttempt | None] = Coalescer(
    "record", _record_together, MAX_BATCH, RUNNERS)


def record_all(done: Sequence[tuple[DeliveryJob, sender.SendResult]]) -> list[NextAttempt]:
    """Record a batch's outcomes with those of the tasks recording beside it
    (``wakeups/wake.py``'s batches); returns the attempts to enqueue."""
    return [nxt for nxt in _RECORDS.submit_many(done) if nxt is not None]


def deliver(notification_id: str, settings: Settings) -> AttemptOutcome:
    """Claim, send and record one attempt; returns once the attempt is recorded."""

    def record_together(job: DeliveryJob, result: sender.SendResult) -> AttemptOutcome:
        following = _RECORDS.submit((job, result))
        status = NotificationStatus.SENT if result.success else NotificationStatus.FAILED
        return AttemptOutcome(ClaimState.CLAIMED, status=status, next_attempt=following,
                              due_at=following.due_at if following else None)

    return run_steps(notification_id, settings, _CLAIMS.submit, record_together)
