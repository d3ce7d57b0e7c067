"""Delivering many notifications per task: the path for backlogs and bulk publishes.

The same guarantees as ``service.deliver`` (a lease per row, one POST per attempt, every
attempt recorded) at a fraction of the database round trips: one claim for the whole
batch, the POSTs in parallel on a thread pool (they are I/O-bound), and one transaction
that writes every attempt and marks every plain success (more while some POSTs are
still out: those that ended are recorded every second). Failures, and successes on an
endpoint that was failing, go through ``record.record`` row by row, because they move
the ladder, the per-endpoint queue and the alerts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from deliverer import lease, outbox
from deliverer.config import Settings
from deliverer.db import in_transaction, session_scope
from deliverer.delivery.claim import LIVE_STATUSES, DeliveryJob, lease_jobs
from deliverer.delivery.recording.outcome import NextAttempt
from deliverer.delivery.recording.record import log_attempt, record_locked
from deliverer.delivery.recording.success import is_plain_success, lock_endpoints, record_successes
from deliverer.delivery.sending import runs, sender, slow_lane
from deliverer.delivery.sending.still_there import StillThere
from deliverer.delivery.unsent import given_back
from deliverer.delivery.voided import ours
from deliverer.logging import delivery_context
from deliverer.models import (
    Notification,
    utcnow,
)
from deliverer.stopping import stopping

log = logging.getLogger(__name__)


@dataclass
class BatchClaim:
    token: str
    jobs: list[DeliveryJob] = field(default_factory=list)
    # Rows whose message came early: (id, lane, due time).
    not_due: list[tuple[str, str, datetime]] = field(default_factory=list)
    # Rows another transaction had locked: to be tried again in a moment.
    locked: list[str] = field(default_factory=list)


def claim_many(session: Session, ids: Sequence[str], settings: Settings,
               now: datetime | None = None) -> BatchClaim:
    """Lease every due, unleased row among ``ids``. Commits nothing."""
    now = now or utcnow()
    if not ids:
        return BatchClaim(token="")
    leased, jobs = lease_jobs(session, ids, settings, now)
    batch = BatchClaim(token=jobs[0].lease_token if jobs else "", jobs=jobs)
    if len(leased) < len(ids):
        # Why the others were not leased, read by key and told apart here: conditions on
        # next_attempt_at in the WHERE let skewed statistics pick the due index (lease_jobs()).
        taken = set(leased)
        for r in session.execute(
            select(Notification.id, Notification.lane, Notification.status,
                   Notification.next_attempt_at, Notification.lease_expires_at)
            .where(Notification.id.in_([i for i in ids if i not in taken]))
        ):
            if r.status not in LIVE_STATUSES or r.next_attempt_at is None:
                continue  # final: nothing more to send
            if r.next_attempt_at > now:
                batch.not_due.append((r.id, r.lane, r.next_attempt_at))
            elif lease.ran_out(r.lease_expires_at, now):
                # Due and unleased, yet not claimed: skipped because another transaction
                # held the row lock (a merchant's request, the sweep). Not to be dropped.
                batch.locked.append(r.id)
    return batch


def release_unsent(session: Session, ids: Sequence[str], token: str,
                   now: datetime, lease_expires_at: datetime | None = None) -> None:
    """Give back the leases of jobs that were not sent (``lease_expires_at``: theirs, if
    a fresh cycle voided them), so they can be claimed at once, and mark them enqueued,
    as the task does right after this commit (so the sweep does not send a second
    message meanwhile). Commits nothing."""
    session.execute(
        update(Notification)
        .where(Notification.id.in_(ids), ours(token, lease_expires_at))
        .values(given_back(None, outbox.handed_over(Notification.next_attempt_at, now)))
        .execution_options(synchronize_session=False)
    )


def record_many(session: Session, jobs: Sequence[DeliveryJob],
                results: Sequence[sender.SendResult], settings: Settings,
                now: datetime | None = None) -> list[NextAttempt]:
    """Lock the endpoints (``lock_endpoints``), write every attempt, then move each
    notification on. Commits nothing."""
    now = now or utcnow()
    done = list(zip(jobs, results, strict=True))
    failing = lock_endpoints(session, done)
    record_successes(session, [(j, r) for j, r in done if is_plain_success(j, r)], now,
                     failing)
    following: list[NextAttempt] = []
    for job, result in done:
        if is_plain_success(job, result):
            continue
        with delivery_context(job.notification_id):
            outcome = record_locked(session, job, result, settings, now, failing)
        if outcome.next_attempt is not None:
            following.append(outcome.next_attempt)
    return following


# A receiver's answer in an attempt row the database refused (a NUL byte in the body once
# did): every outcome of the transaction went unrecorded, and each webhook was POSTed
# again when its lease ran out, for good. What the receiver said is dropped instead.
UNSTORABLE = "(the receiver's answer could not be stored)"


def record_each(done: Sequence[tuple[DeliveryJob, sender.SendResult]],
                settings: Settings) -> list[NextAttempt]:
    """After a transaction of outcomes failed for a reason other than a transient abort:
    each outcome in a transaction of its own, so that one the database refuses holds no
    other; one refused alone is recorded without the receiver's words (``UNSTORABLE``).
    One refused even so is left (its lease runs out) and raised once the others are."""
    def alone(job: DeliveryJob, result: sender.SendResult) -> list[NextAttempt]:
        return in_transaction(lambda session: record_many(session, [job], [result], settings),
                              retry_for=settings.lease_seconds)

    following: list[NextAttempt] = []
    refused: Exception | None = None
    for job, result in done:
        try:
            following += alone(job, result)
        except OperationalError:
            raise  # the database is failing, not this outcome
        except Exception:
            log.exception("attempt refused by the database: recorded without the answer",
                          extra={"notification_id": job.notification_id})
            error = result.error and {**result.error, "message": UNSTORABLE}
            try:
                following += alone(job, dataclasses.replace(result, body=None, error=error))
            except OperationalError:
                raise
            except Exception as exc:
                refused = refused or exc
    if refused is not None:
        raise refused
    return following


def record_outcomes(done: Sequence[tuple[DeliveryJob, sender.SendResult]],
                    settings: Settings) -> list[NextAttempt]:
    """``done``'s outcomes in one transaction (``record_many``), run again after transient
    aborts, for up to a lease: the POSTs happened, and a deadlock or a database restart
    must not leave them to be sent again. Failing otherwise, ``record_each``."""
    try:
        return in_transaction(
            lambda session: record_many(session, [job for job, _ in done],
                                        [result for _, result in done], settings),
            retry_for=settings.lease_seconds)
    except OperationalError:
        raise
    except Exception:
        log.exception("recording %d outcomes together failed: each alone", len(done))
        return record_each(done, settings)


@dataclass(frozen=True)
class BatchOutcome:
    sent: int
    failed: int
    following: list[NextAttempt]
    not_due: list[tuple[str, str, datetime]]
    locked: list[str] = field(default_factory=list)
    deferred: int = 0
    # Claimed, not sent: the lease would have run out before their POSTs ended. (id, lane)
    unsent: list[tuple[str, str]] = field(default_factory=list)


def deliver_many(ids: Sequence[str], settings: Settings) -> BatchOutcome:
    """Claim, send and record a batch; each database step in its own short transaction."""
    leased_at = time.monotonic()  # no later than the lease's start: the cutoff errs early
    with session_scope() as session:
        batch = claim_many(session, ids, settings)
    return deliver_claimed(batch, leased_at, settings)


RecordStep = Callable[[list[tuple[DeliveryJob, sender.SendResult]]], list[NextAttempt]]


def deliver_claimed(batch: BatchClaim, leased_at: float, settings: Settings,
                    record: RecordStep | None = None) -> BatchOutcome:
    """Send and record a claimed batch (``leased_at``: ``time.monotonic()`` no later than
    the claim): the slow lane, the POSTs, then the outcomes, with ``record`` when given
    (``together.record_all``) or ``record_outcomes``: those of POSTs that ended first
    while others are out (``runs.perform_many``'s ``early``), then the rest."""
    admitted, refused = runs.admit_many(batch.jobs, settings)
    expires = batch.jobs[0].lease_expires_at if batch.jobs else None  # one claim's lease
    if refused:
        in_transaction(
            lambda session: slow_lane.defer(
                session, [job.notification_id for job in refused], batch.token, settings,
                lease_expires_at=expires),
            retry_for=settings.lease_seconds)
    if not admitted:
        return BatchOutcome(0, 0, [], batch.not_due, batch.locked, deferred=len(refused))
    following: list[NextAttempt] = []
    recorded: set[int] = set()

    def record_now(pairs: list[tuple[DeliveryJob, sender.SendResult]]) -> None:
        following.extend(record(pairs) if record is not None
                         else record_outcomes(pairs, settings))
        for job, r in pairs:
            log_attempt(job.notification_id, r)

    def early(sends: runs.Sends, indexes: list[int]) -> None:
        ended = [(i, r) for i in indexes if (r := sends.results[i]) is not None]
        if ended:
            record_now([(admitted[i][0], r) for i, r in ended])
            recorded.update(i for i, _ in ended)

    sends = runs.perform_many(admitted, settings, runs.send_cutoff(leased_at, settings),
                              early=early,
                              still_there=StillThere(leased_at, batch.jobs))
    done = [(job, r) for (job, _), r in zip(admitted, sends.results, strict=True)
            if r is not None]
    refused_late = [admitted[i][0].notification_id for i in sorted(sends.refused)]
    unsent = [(job.notification_id, job.lane)
              for i, ((job, _), r) in enumerate(zip(admitted, sends.results, strict=True))
              if r is None and i not in sends.refused]
    if len(unsent) > len(sends.moved):
        log.warning("%s: %d of %d deliveries handed back unsent",
                    "worker stopping" if stopping() else "lease running out",
                    len(unsent) - len(sends.moved), len(admitted))
    if sends.moved:
        log.info("%d of %d deliveries handed back unsent: their endpoint moved to another "
                 "URL, or was disabled or deleted, since the claim", len(sends.moved),
                 len(admitted))

    def hand_back(session: Session) -> None:
        if refused_late:
            slow_lane.defer(session, refused_late, batch.token, settings,
                            lease_expires_at=expires)
        if unsent:
            release_unsent(session, [nid for nid, _ in unsent], batch.token, utcnow(),
                           expires)

    if refused_late or unsent:
        in_transaction(hand_back, retry_for=settings.lease_seconds)
    rest = [(admitted[i][0], r) for i, r in enumerate(sends.results)
            if r is not None and i not in recorded]
    if rest:
        record_now(rest)
    sent = sum(1 for _, r in done if r.success)
    return BatchOutcome(sent, len(done) - sent, following, batch.not_due, batch.locked,
                        deferred=len(refused) + len(refused_late), unsent=unsent)

