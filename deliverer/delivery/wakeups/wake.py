"""Wake-ups: one broker message per endpoint with first attempts due, not one per
notification (PostgreSQL).

A publish marks the endpoint's row in the statement that reserves its sequence numbers
(``partners/endpoints.py``) and sends a wake-up (``deliverer.deliver_due``) only when
none is pending: during a burst, most publishes send no message at all. The worker that
takes the wake-up clears the mark, then, in the same transaction, leases the endpoint's
due first attempts (at most a batch, the oldest first) and sets the mark again if due
ones remain. After the commit it passes the wake-up on when some remain,
before its POSTs, so that other threads and workers share a hot endpoint, then sends and
records its batch as ``batch.deliver_many`` does (``wakes_together.py``). A lone
publish is a batch of one, delivered at once; batches form only behind a backlog.

Nothing is stranded by the dedupe: the mark's row lock orders each publish against
each clearing. A publish that found the mark set had committed before the clearing
could lock the row, so the claim's next statement (READ COMMITTED: each statement sees
what committed before it began) sees its notification; one that came after waited for
the claim's commit, then found the mark cleared and sent a wake-up, or found it set
again, with the wake-up passed on after that commit to take its notification. A wake-up
lost with a killed worker counts as pending for ``WAKE_TTL`` only; the rows stay the
outbox's, marked as enqueued at their publish, so the sweep's lost-message grace hands
them over as before.

Behind a backlog, a batch is filled from other endpoints too: a wake-up whose own
endpoint has fewer due than a batch, and whose claim's oldest row waited for
``BACKLOG_AGE`` (or that found none), also leases the due first attempts of endpoints
whose wake-ups have waited in the broker that long (``_steal``). A burst spread over
many merchants (a thousand endpoints with a few notifications each) is so delivered in
full batches by the first wake-ups taken; the later ones find their endpoints' rows
already leased or sent, and cost a claim each. Their marks are left alone, so the
argument above is untouched: each endpoint's own wake-up still comes, and claims
whatever is still due. Without a backlog (wake-ups taken within milliseconds), nothing
is borrowed and a lone publish is still a batch of one, claimed without the borrowing's
statement (so the rows of a wake-up lost with a killed worker wait, at a steady rate,
for the next publish after ``WAKE_TTL`` or the sweep's grace, not for the next claim
with room). Failing, disabled and deleted endpoints are not borrowed from: their own
wake-ups deal with them, so a slow endpoint's POSTs never hold a healthy batch's record.

Clocks: a publish makes its first attempt due at the publisher's clock, the claim
compares with the worker's. From a producer whose clock runs ahead, a notification is not
due yet when its wake-up is taken; the claim hands each such row a message of its own,
due when it is (``_EARLY``), instead of leaving it to the sweep's lost-message grace.

A single publish to a healthy endpoint wakes the endpoint's group instead
(``wake_groups.py``), whose claim takes the group's marked endpoints through
``claim_due_many``, each with a share of a batch (``limits``).

SQLite (the embedded default) keeps a message per notification (``uses_wake_ups``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    bindparam,
    case,
    exists,
    false,
    func,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from deliverer import lease
from deliverer.config import Settings
from deliverer.delivery.batch import BatchClaim, claim_many
from deliverer.models import Endpoint, Lane, Notification, NotificationStatus, table_of, utcnow
from deliverer.models.endpoint import locked_in_id_order
from deliverer.models.in_list import in_list
from deliverer.prepared import prepared

# A wake-up not taken within this long counts as lost: the next publish sends another
# (an extra one finds little or nothing to do).
WAKE_TTL = timedelta(seconds=5)
# How far ahead of a worker's clock a publisher's may be for its first attempts to be
# sent when they come due, not after the sweep's lost-message grace (``_early``).
CLOCK_SKEW = timedelta(seconds=2)
# A wake-up that waited this long in the broker marks a backlog: its endpoint's due rows
# may fill other wake-ups' batches (``_steal``). Far above the milliseconds a wake-up
# waits on an idle worker, far below the WAKE_TTL.
BACKLOG_AGE = timedelta(milliseconds=200)

_ENDPOINTS = table_of(Endpoint)
_E = _ENDPOINTS.c
_N = table_of(Notification).c
_NOW = bindparam("now", type_=_N.next_attempt_at.type)


def _due_first(endpoint_id: ColumnElement[Any]) -> tuple[ColumnElement[bool], ...]:
    return (_N.endpoint_id == endpoint_id, _N.status == NotificationStatus.PENDING,
            _N.lane == Lane.FIRST, _N.next_attempt_at <= _NOW,
            lease.is_free(_N.lease_expires_at, _NOW))


# The woken endpoints, each with how many of its rows to take (a batch for its own
# wake-up, a share of one for a group's).
_WOKEN = (func.unnest(bindparam("w_ids", type_=ARRAY(BigInteger())),
                      bindparam("w_limits", type_=ARRAY(Integer())))
          .table_valued("endpoint_id", "lim").render_derived("woken"))
# Per endpoint, in the order of ix (endpoint_id, status, next_attempt_at): an index range.
_PICKED = (select(_N.id, _N.next_attempt_at).where(*_due_first(_WOKEN.c.endpoint_id))
           .order_by(_N.next_attempt_at).limit(_WOKEN.c.lim)
           .with_for_update(skip_locked=True).lateral("picked"))
# How many are due (up to one more than were to be taken), read without locks in the
# same statement: more than were picked means some remain (or were skipped, locked by
# another transaction): the wake-up is passed on, which errs on the safe side.
_DUE = (select(func.count().label("due"))
        .select_from(select(_N.id).where(*_due_first(_WOKEN.c.endpoint_id))
                     .limit(_WOKEN.c.lim + 1).correlate(_WOKEN).subquery())
        .lateral("counted"))
# First attempts published "due now" by a clock ahead of the worker's: not due by its
# clock, so neither taken nor counted, and nothing else would send them until the
# sweep's lost-message grace. Published rows are enqueued at their due time; a row paced
# back to a later slot is enqueued before it (``pacing``), so it is not one of these.
_EARLY_BY = bindparam("early_by", type_=_N.next_attempt_at.type)


def _early(of_endpoints: ColumnElement[bool]) -> tuple[ColumnElement[bool], ...]:
    return (of_endpoints, _N.status == NotificationStatus.PENDING,
            _N.lane == Lane.FIRST, _N.next_attempt_at > _NOW,
            _N.next_attempt_at <= _EARLY_BY, _N.enqueued_at >= _N.next_attempt_at,
            lease.is_free(_N.lease_expires_at, _NOW))


# Looked for only where none is due (PostgreSQL runs a CASE branch's subquery only when
# it is taken): an index range of the endpoint's rows due within CLOCK_SKEW, which for a
# rate-limited endpoint with a backlog holds its paced rows.
_EARLY = case((_DUE.c.due == 0,
               exists(select(_N.id).where(*_early(_N.endpoint_id == _WOKEN.c.endpoint_id))
                      .correlate(_WOKEN))),
              else_=false())
_PICK = prepared(select(_WOKEN.c.endpoint_id, _PICKED.c.id, _PICKED.c.next_attempt_at,
                         _DUE.c.due, _EARLY.label("early"))
                  .select_from(_WOKEN.join(_DUE, true()).outerjoin(_PICKED, true())))
# Each such row is handed its own message, due when it is (the task's NOT_DUE follow-up),
# and marked as enqueued now, so that the next wake-up does not send it another.
_EARLY_ROWS = (select(_N.id).where(*_early(in_list(_N.endpoint_id, "ids")))
               .with_for_update(skip_locked=True).scalar_subquery())
_RESCHEDULE = (update(table_of(Notification)).where(_N.id.in_(_EARLY_ROWS))
               .values(enqueued_at=_NOW)
               .returning(_N.id, _N.lane, _N.next_attempt_at, _N.endpoint_id))
# Endpoints whose wake-up has waited since before :waited_since, the longest-waiting
# first (ix_endpoints_wake_sent_at), and per endpoint its oldest due first attempts, at
# most :cap rows in all. Evaluated lazily, so only the rows returned are locked.
_CAP = bindparam("cap", type_=Integer())
_WAITING = (select(_E.id.label("endpoint_id"))
            .where(_E.wake_sent_at < bindparam("waited_since", type_=_E.wake_sent_at.type),
                   ~in_list(_E.id, "ids"), _E.failing_since.is_(None),
                   _E.disabled_at.is_(None), _E.deleted_at.is_(None))
            .order_by(_E.wake_sent_at).limit(_CAP).subquery("waiting"))
_BORROWED = (select(_N.id).where(*_due_first(_WAITING.c.endpoint_id))
             .order_by(_N.next_attempt_at).limit(_CAP)
             .with_for_update(skip_locked=True).lateral("borrowed"))
_STEAL = prepared(select(_WAITING.c.endpoint_id, _BORROWED.c.id)
                  .select_from(_WAITING.join(_BORROWED, true())).limit(_CAP))
CLEAR_MARKS = prepared(update(_ENDPOINTS).where(locked_in_id_order(in_list(_E.id, "ids")))
                       .values(wake_sent_at=None))
# The same, of rows the transaction holds already (a group's claim: ``wake_groups.
# _MARKED``): no order of locks to keep.
CLEAR_HELD_MARKS = update(_ENDPOINTS).where(in_list(_E.id, "ids")).values(wake_sent_at=None)
# For a group's claim: a publish to its endpoints committed before their lock, so the
# clearing, no longer the step that orders them, can go into the pick's statement (a
# round trip fewer).
_CLEAR_AND_PICK = prepared(_PICK.add_cte(CLEAR_HELD_MARKS.cte("cleared")))
_SET = prepared(update(_ENDPOINTS).where(in_list(_E.id, "ids"))
                .values(wake_sent_at=_NOW, wake_by_group=bindparam("by_group")))


def uses_wake_ups(settings: Settings) -> bool:
    """SQLite serialises every writer anyway; it keeps a message per notification."""
    return not settings.is_sqlite


def wake_stale(settings: Settings, now: datetime) -> datetime | None:
    """For a publish at ``now``: a pending wake-up sent before this is taken as lost.
    None: no wake-ups on this database."""
    return now - WAKE_TTL if uses_wake_ups(settings) else None


def claim_due_many(session: Session, endpoint_ids: Sequence[int], settings: Settings,
                   limits: Mapping[int, int] | None = None, by_group: bool = False
                   ) -> dict[int, tuple[BatchClaim, bool]]:
    """Take the endpoints' wake-ups: clear their marks, then, for each, lease its due
    first attempts, at most a batch (or ``limits[id]``), and say whether due ones remain
    (then its mark is set again, the group's wake-up's with ``by_group``, and the caller
    passes its wake-up on after the commit).
    The clearing locks the endpoint rows until the commit: a publish to them waits for
    the claim (a few round trips), which is one commit fewer than a clearing committed
    on its own. With ``by_group`` (a group's claim), the rows are locked already, by the
    group's ``_MARKED``, which skipped those other transactions held: the clearing goes
    into the pick's statement. Commits nothing."""
    ids = sorted(set(endpoint_ids))
    batch_size = max(1, settings.delivery_batch_size)
    limit_of = {endpoint_id: max(1, (limits or {}).get(endpoint_id, batch_size))
                for endpoint_id in ids}
    connection = session.connection()
    if not by_group:
        connection.execute(CLEAR_MARKS, {"ids": ids})  # first: see the module's docstring
    # Read after the rows were locked (by the clearing, which waited for any publish
    # holding them, or by the group's claim), so that what such a publish made is due by
    # this clock: taken, or counted as remaining.
    now = utcnow()
    early_by = now + CLOCK_SKEW
    endpoint_of: dict[str, int] = {}
    due: dict[int, int] = {}
    early: set[int] = set()
    oldest: datetime | None = None
    for endpoint_id, nid, due_at, count, has_early in connection.execute(
            _CLEAR_AND_PICK if by_group else _PICK, {
                "ids": ids, "w_ids": ids, "w_limits": [limit_of[i] for i in ids], "now": now,
                "early_by": early_by}):
        if has_early:
            early.add(endpoint_id)
        due[endpoint_id] = count
        if nid is not None:
            endpoint_of[nid] = endpoint_id
            oldest = due_at if oldest is None else min(oldest, due_at)
    picked = Counter(endpoint_of.values())
    remaining = {endpoint_id for endpoint_id, count in due.items()
                 if count > picked[endpoint_id]}
    # Each wake-up whose endpoint is drained carries borrowed rows up to its limit, behind
    # a backlog: when its own rows waited too (or it found none). At a steady rate a
    # lone row, due milliseconds ago, skips the statement.
    backlog = oldest is None or oldest <= now - BACKLOG_AGE
    spare = {endpoint_id: limit_of[endpoint_id] - picked[endpoint_id] for endpoint_id in ids
             if endpoint_id not in remaining and picked[endpoint_id] < limit_of[endpoint_id]}
    carrier_of = _steal(connection, ids, spare, now) if backlog and spare else {}
    claim = claim_many(session, [*endpoint_of, *carrier_of], settings, now)
    endpoint_of.update(carrier_of)
    if remaining:
        connection.execute(_SET, {"ids": sorted(remaining), "now": now, "by_group": by_group})
    claims = {endpoint_id: (BatchClaim(token=claim.token), endpoint_id in remaining)
              for endpoint_id in ids}
    for job in claim.jobs:
        claims[endpoint_of[job.notification_id]][0].jobs.append(job)
    for item in claim.not_due:
        claims[endpoint_of[item[0]]][0].not_due.append(item)
    for nid in claim.locked:
        claims[endpoint_of[nid]][0].locked.append(nid)
    if early:
        for nid, lane, due_at, endpoint_id in connection.execute(_RESCHEDULE, {
                "ids": sorted(early), "now": now, "early_by": early_by}):
            claims[endpoint_id][0].not_due.append((nid, lane, due_at))
    return claims


def _steal(connection: Connection, woken: list[int], spare: dict[int, int],
           now: datetime) -> dict[str, int]:
    """Borrow due first attempts of endpoints waiting behind a backlog, up to the spare
    room of the woken endpoints' batches; returns each borrowed row's carrier (the woken
    endpoint whose batch takes it). Locks them, leases nothing."""
    cap = sum(spare.values())
    if cap <= 0:
        return {}
    rows = connection.execute(_STEAL, {"ids": woken, "cap": cap, "now": now,
                                       "waited_since": now - BACKLOG_AGE}).all()
    carriers = [endpoint_id for endpoint_id, room in spare.items() for _ in range(room)]
    return {nid: carrier for (_endpoint_id, nid), carrier in zip(rows, carriers, strict=False)}


def claim_due(session: Session, endpoint_id: int, settings: Settings
              ) -> tuple[BatchClaim, bool]:
    """``claim_due_many`` of one endpoint."""
    return claim_due_many(session, [endpoint_id], settings)[endpoint_id]
