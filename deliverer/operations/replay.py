"""Bulk replay (``deliverer replay``): many notifications given an operator retry at
once, at a bounded rate, after an outage (``operator_actions`` has the rules: a fresh
cycle like a merchant's manual retry, none of the merchant's limits, FAILED ones and,
when asked for, NOT_SENT ones, never a SENT one, on the audit trail as ``OPERATOR``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.db import in_transaction, is_transient_abort, session_scope
from deliverer.errors import Conflict, PartnerNotFound
from deliverer.models import (
    Endpoint,
    Notification,
    NotificationStatus,
    Partner,
    RequestKind,
    utcnow,
)
from deliverer.models.endpoint import PUBLIC_ID_PREFIX
from deliverer.notifications.cycle import (
    check_deliverable_of,
)
from deliverer.operations.operator_actions import (
    check_pushed,
    not_pushed,
    record_operator_action,
    requeue,
)
from deliverer.partners.registered import EndpointNotFound

# How long a replay batch the database aborted (a deadlock victim) is run again.
RUN_AGAIN_FOR = 10.0


@dataclass(frozen=True)
class ReplayFilter:
    partner_id: str
    # The endpoint's URL, or its public id (ep_...: as stats, the console and the API
    # name it; taken for a URL, it matched nothing, silently: the operator try).
    endpoint_url: str | None = None
    since: datetime | None = None  # notification created at or after
    until: datetime | None = None  # notification created before
    include_not_sent: bool = False

    @property
    def statuses(self) -> tuple[str, ...]:
        if self.include_not_sent:
            return (NotificationStatus.FAILED, NotificationStatus.NOT_SENT)
        return (NotificationStatus.FAILED,)


@dataclass(frozen=True)
class ReplayResult:
    matched: int
    replayed: int
    skipped: int  # changed status meanwhile (delivered, retried), nowhere to send, its
                  # endpoint disabled or webhooks off, or the partner left the WEBHOOK
                  # flow meanwhile
    held_back: int = 0  # of the skipped: its endpoint disabled, or webhooks turned off


def find_replayable(session: Session, flt: ReplayFilter) -> list[str]:
    """Ids of the matching notifications, oldest first (per endpoint: sequence order)."""
    partner = session.get(Partner, flt.partner_id)
    if partner is None:
        raise PartnerNotFound()
    check_pushed(partner)
    query = select(Notification.id).where(Notification.partner_id == flt.partner_id,
                                          Notification.status.in_(flt.statuses))
    if flt.endpoint_url is not None and flt.endpoint_url.lower().startswith(PUBLIC_ID_PREFIX):
        key = session.scalar(select(Endpoint.id).where(
            Endpoint.partner_id == flt.partner_id,
            Endpoint.public_id == flt.endpoint_url.lower()))
        if key is None:
            raise EndpointNotFound()
        query = query.where(Notification.endpoint_id == key)
    elif flt.endpoint_url is not None:
        query = query.where(Notification.url == flt.endpoint_url)
    if flt.since is not None:
        query = query.where(Notification.created_at >= flt.since)
    if flt.until is not None:
        query = query.where(Notification.created_at < flt.until)
    return list(session.scalars(query.order_by(Notification.created_at, Notification.sequence,
                                               Notification.id)))


def replay_ids(session: Session, settings: Settings, ids: Sequence[str],
               statuses: Sequence[str], now: datetime, *, start_index: int = 0,
               rate: float | None = None) -> tuple[int, list[str], int]:
    """Requeue those of ``ids`` still in ``statuses``. Commits nothing.

    Returns how many were requeued, the ids it did not look at because another
    transaction held their rows, and how many were held back (their endpoint disabled,
    webhooks turned off). A call for several notifications never waits for their rows
    (SKIP LOCKED), since a worker recording an attempt holds its notification and
    may update others of its endpoint in no particular order, and the two would deadlock
    (``deliverer.notifications.manual_retry``). The caller replays those one by one: a
    call for one notification waits for its row.
    """
    several = len(ids) > 1
    rows = {n.id: n for n in session.scalars(
        select(Notification).where(Notification.id.in_(list(ids)))
        .with_for_update(key_share=True, skip_locked=several))}
    pushed: dict[str, bool] = {}  # by partner: it may have left the WEBHOOK flow meanwhile
    replayed = held_back = 0
    busy = []
    for offset, nid in enumerate(ids):
        row = rows.get(nid)
        if row is None:
            if several:
                busy.append(nid)  # or gone: the call for it alone will tell
            continue
        if row.status not in statuses:
            continue
        if row.partner_id not in pushed:
            partner = session.get(Partner, row.partner_id)
            pushed[row.partner_id] = partner is not None and not_pushed(partner) is None
        if not pushed[row.partner_id]:
            continue
        try:
            facts = check_deliverable_of(session, row)
        except Conflict:
            held_back += 1  # its endpoint disabled, webhooks off: it would only be held
            continue
        due = None
        if rate:
            due = now + timedelta(seconds=(start_index + offset) / rate)
        if requeue(session, settings, row, facts, now, due_at=due):
            record_operator_action(session, row.partner_id, RequestKind.RETRY, now,
                                   notification_id=row.id)
            replayed += 1
    session.flush()
    return replayed, busy, held_back


def replay(settings: Settings, flt: ReplayFilter, *, ids: Sequence[str] | None = None,
           batch_size: int = 200, rate: float | None = None,
           progress: Callable[[int], object] | None = None,
           now: datetime | None = None) -> ReplayResult:
    """Replay the matching notifications, one short transaction per batch.

    ``ids``: exactly these, as ``find_replayable(flt)`` returned them, e.g. what the
    operator was shown and confirmed (notifications failing since are not added); by
    default, whatever matches now. Either way a notification is replayed only if it is
    still in the filter's statuses. ``rate`` (notifications per second) spreads the
    attempts out instead of sending them all at once, for an endpoint that has just come
    back. ``progress`` is called with the number of notifications handled after each
    batch (the CLI's progress bar; they add up to ``len(ids)``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    if ids is None:
        with session_scope() as session:
            ids = find_replayable(session, flt)
    start = now or utcnow()

    def run(chunk: Sequence[str], start_index: int) -> tuple[int, list[str], int]:
        # A transaction of its own, run again if PostgreSQL aborts it as a deadlock
        # victim (or a serialization failure): such an abort rolled it all back. Not
        # after any other error, which may have followed its commit.
        return in_transaction(
            lambda session: replay_ids(session, settings, chunk, flt.statuses,
                                       # With a rate, every batch keeps the schedule
                                       # computed from the start.
                                       start if rate else (now or utcnow()),
                                       start_index=start_index, rate=rate),
            retry_for=RUN_AGAIN_FOR, only_if=is_transient_abort)

    replayed = held_back = 0
    for index in range(0, len(ids), batch_size):
        batch = ids[index:index + batch_size]
        done, busy, held = run(batch, index)
        replayed, held_back = replayed + done, held_back + held
        # The rows another transaction held, right after: each alone, waiting for it.
        for nid in busy:
            done, _, held = run([nid], index + batch.index(nid))
            replayed, held_back = replayed + done, held_back + held
        if progress is not None:
            progress(len(batch))
    return ReplayResult(matched=len(ids), replayed=replayed, skipped=len(ids) - replayed,
                        held_back=held_back)
