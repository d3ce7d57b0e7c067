"""Wake-ups: one broker message per endpoint with first attempts due, not one per
notification (PostgreSQL).

A publish marks the endpoint's row in the statement that reserves its sequence numbers
(``partners/endpoints.py``) and sends a wake-up (``deliverer.deliver_due``) only when
none is pending: during a burst, most publishes send no message at all. The worker that
takes the wake-up, in one transaction, locks the endpoint's row, leases the endpoint's
due first attempts (at most a batch, the oldest first), and leaves the mark set if due
ones remain, or clears it. After the commit it passes the wake-up on when some remain,
before its POSTs, so that other threads and workers share a hot endpoint, then sends and
records its batch as ``batch.deliver_many`` does. A lone publish is a batch of one,
delivered at once; batches form only behind a backlog.

Nothing is stranded by the dedupe: the row lock orders each publish against each claim.
A publish that commits before the claim locks the row is seen by the claim's later
statements (or by the test of what remains); one that comes after waits for the claim's
commit and finds the mark as the claim left it: cleared (it sends a wake-up) or set (the
wake-up passed on will take its notification). A wake-up lost with a killed worker
counts as pending for ``WAKE_TTL`` only; the rows stay the outbox's, marked as enqueued
at their publish, so the sweep's lost-message grace hands them over as before.

SQLite (the embedded default) keeps a message per notification (``uses_wake_ups``).
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, exists, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from deliverer import lease
from deliverer.broker import dispatch
from deliverer.config import Settings
from deliverer.db import on_commit, session_scope
from deliverer.delivery.batch import BatchClaim, BatchOutcome, claim_many, deliver_claimed
from deliverer.models import Endpoint, Lane, Notification, NotificationStatus, table_of, utcnow

# A wake-up not taken within this long counts as lost: the next publish sends another
# (an extra one finds little or nothing to do).
WAKE_TTL = timedelta(seconds=5)

_E = table_of(Endpoint).c
_N = table_of(Notification).c
_ENDPOINT: BindParameter[int] = bindparam("endpoint_id")
_NOW = bindparam("now", type_=_N.next_attempt_at.type)
_DUE_FIRST = (_N.endpoint_id == _ENDPOINT, _N.status == NotificationStatus.PENDING,
              _N.lane == Lane.FIRST, _N.next_attempt_at <= _NOW,
              lease.is_free(_N.lease_expires_at, _NOW))
# FOR NO KEY UPDATE: the lock a publish's UPDATE of the row takes, not the one that
# would also hold up inserts referencing the endpoint.
_LOCK = select(_E.id).where(_E.id == _ENDPOINT).with_for_update(key_share=True)
# In the order of ix (endpoint_id, status, next_attempt_at): an index range, no sort.
_PICK = (select(_N.id).where(*_DUE_FIRST).order_by(_N.next_attempt_at)
         .limit(bindparam("limit")).with_for_update(skip_locked=True))
_SETTLE = (update(table_of(Endpoint)).where(_E.id == _ENDPOINT)
           .values(wake_sent_at=case((exists().where(*_DUE_FIRST), _NOW), else_=None))
           .returning(_E.wake_sent_at))


def uses_wake_ups(settings: Settings) -> bool:
    """SQLite serialises every writer anyway; it keeps a message per notification."""
    return not settings.is_sqlite


def wake_stale(settings: Settings, now: datetime) -> datetime | None:
    """For a publish at ``now``: a pending wake-up sent before this is taken as lost.
    None: no wake-ups on this database."""
    return now - WAKE_TTL if uses_wake_ups(settings) else None


def claim_due(session: Session, endpoint_id: int, settings: Settings,
              now: datetime | None = None) -> tuple[BatchClaim, bool]:
    """Lease the endpoint's due first attempts, at most a batch; returns the claim and
    whether due ones remain (the mark is then left set, and the caller passes the
    wake-up on after the commit). Commits nothing."""
    now = now or utcnow()
    connection = session.connection()
    if connection.execute(_LOCK, {"endpoint_id": endpoint_id}).first() is None:
        return BatchClaim(token=""), False
    ids = list(connection.execute(_PICK, {"endpoint_id": endpoint_id, "now": now,
                                          "limit": max(1, settings.delivery_batch_size)})
               .scalars())
    batch = claim_many(session, ids, settings, now)
    mark = connection.execute(_SETTLE, {"endpoint_id": endpoint_id, "now": now}).scalar()
    return batch, mark is not None


def deliver_due(endpoint_id: int, settings: Settings) -> BatchOutcome:
    """Take an endpoint's wake-up: claim its due first attempts, pass the wake-up on if
    more remain, then send and record the batch."""
    leased_at = time.monotonic()  # no later than the lease's start: the cutoff errs early
    with session_scope() as session:
        batch, more = claim_due(session, endpoint_id, settings)
        if more:
            on_commit(session, functools.partial(dispatch.enqueue_wake, endpoint_id))
    return deliver_claimed(batch, leased_at, settings)
