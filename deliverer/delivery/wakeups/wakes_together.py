"""Taking wake-ups in a worker: an endpoint's wake-up (``deliver_due``) claims its due
first attempts (``wake.claim_due_many``), passes the wake-up on if more remain, then
sends and records the batch.

The wake-ups a worker's threads take at the same moment are claimed in one transaction,
and their outcomes recorded in one (``deliverer.batching.Coalescer``, as
``together.py`` does for single messages): a backlog spread over many endpoints has
few notifications per endpoint. Each batch's POSTs stay with its own task.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from deliverer.batching import Coalescer
from deliverer.broker import dispatch
from deliverer.config import Settings, get_settings
from deliverer.db import autocommitted, in_transaction, is_transient_abort
from deliverer.delivery import together
from deliverer.delivery.batch import BatchClaim, BatchOutcome, deliver_claimed
from deliverer.delivery.wakeups.wake import CLEAR_MARKS, claim_due_many


def _claim_together(endpoint_ids: Sequence[int]) -> list[tuple[BatchClaim, bool]]:
    settings = get_settings()
    # Run again if a deadlock (a fan-out publish locking the same endpoints) rolls it
    # back whole, or the wake-ups would be lost until the sweep's grace.
    try:
        claims = in_transaction(
            lambda session: claim_due_many(session, endpoint_ids, settings),
            retry_for=settings.lease_seconds / 4, only_if=is_transient_abort)
    except Exception:
        # Its rollback undid the clearing too: the marks would say a wake-up is pending
        # while these were taken, and publishes would send none for WAKE_TTL. Cleared on
        # their own, at best (the database may be what failed): the next publish wakes.
        with contextlib.suppress(Exception):
            autocommitted(lambda connection: connection.execute(
                CLEAR_MARKS, {"ids": sorted(set(endpoint_ids))}))
        raise
    seen: set[int] = set()
    out = []
    for endpoint_id in endpoint_ids:  # a wake-up taken twice at once: the second is empty
        out.append(claims[endpoint_id] if endpoint_id not in seen
                   else (BatchClaim(token=""), False))
        seen.add(endpoint_id)
    return out


_CLAIMS: Coalescer[int, tuple[BatchClaim, bool]] = Coalescer(
    "wake", _claim_together, together.MAX_BATCH, together.RUNNERS)


def deliver_due(endpoint_id: int, settings: Settings) -> BatchOutcome:
    """Take an endpoint's wake-up: claim its due first attempts, pass the wake-up on if
    more remain, then send and record the batch."""
    leased_at = time.monotonic()  # no later than the lease's start: the cutoff errs early
    claim, more = _CLAIMS.submit(endpoint_id)
    if more:
        dispatch.enqueue_wake(endpoint_id)
    return deliver_claimed(claim, leased_at, settings, record=together.record_all)
