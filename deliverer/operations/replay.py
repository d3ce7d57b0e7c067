"""Operator retries: one notification from the console, or many at once (bulk replay).

An operator retry resets a notification exactly like a merchant's manual retry (a fresh
cycle on the manual lane, sent to the partner's current webhook URL, queued after the
commit) but is not bound by the merchant's limits (3 manual retries per notification, 10
a minute): an operator is the escape hatch when those are exhausted, and replaying after
an outage may concern thousands of notifications. It still obeys the status rule: only
FAILED notifications (and, when asked for, NOT_SENT ones) are replayed; a SENT one never
is. It does not use up the merchant's manual retries (``manual_retry_count`` unchanged).
Neither pushes anything to a partner publishing sends no webhook to (the POLLING flow,
an inactive partner): those are refused with ``NotPushed``.

Every operator action is on the audit trail: a ``partner_requests`` row with no API key
and the outcome ``OPERATOR``. The merchant rate limits count ``ACCEPTED`` rows only, so
operator work never eats into a merchant's allowance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer.broker.dispatch import enqueue_delivery
from deliverer.config import Settings
from deliverer.db import in_transaction, is_transient_abort, on_commit, session_scope
from deliverer.errors import Conflict, NotificationNotFound, NotPushed, PartnerNotFound
from deliverer.models import (
    Endpoint,
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    PartnerRequest,
    RequestKind,
    not_receiving_webhooks,
    utcnow,
)
from deliverer.models.endpoint import PUBLIC_ID_PREFIX
from deliverer.notifications.audit import ACCEPTED, OPERATOR
from deliverer.notifications.cycle import (
    NOT_FAILED,
    check_deliverable_of,
    repoint_to_current_url,
    start_fresh_cycle,
)
from deliverer.notifications.ignore import ignore
from deliverer.notifications.queries import is_uuid
from deliverer.partners.endpoints import next_sequence
from deliverer.partners.registered import EndpointNotFound
from deliverer.partners.service import Principal

# How long a replay batch the database aborted (a deadlock victim) is run again.
RUN_AGAIN_FOR = 10.0

NO_URL = "The partner has no webhook URL to send to"


def not_pushed(partner: Partner) -> str | None:
    """Why publishing sends the partner no webhook (POLLING flow, inactive), or None: an
    operator must not push what the partner was never to receive."""
    return not_receiving_webhooks(partner.active, partner.flow)


def check_pushed(partner: Partner) -> None:
    reason = not_pushed(partner)
    if reason is not None:
        raise NotPushed(reason)


def record_operator_action(session: Session, notification: Notification, kind: str,
                           now: datetime) -> PartnerRequest:
    row = PartnerRequest(partner_id=notification.partner_id, api_key_id=None, kind=kind,
                         outcome=OPERATOR, notification_id=notification.id, created_at=now)
    session.add(row)
    return row


def requeue(session: Session, settings: Settings, notification: Notification,
            facts: Mapping[str, Any], now: datetime, *, due_at: datetime | None = None
            ) -> bool:
    """Reset ``notification`` like a manual retry and queue it once the session commits.

    Mirrors ``deliverer.notifications.manual_retry`` minus the limits and minus
    ``manual_retry_count``. ``due_at`` (bulk replay at a bounded rate) delays the attempt:
    within the sweep horizon it is enqueued with that ETA, later the beat sweep enqueues
    it. Returns False, changing nothing, when there is no URL to send to. ``facts``:
    ``check_deliverable_of``'s, which the caller has checked.
    """
    repoint_to_current_url(session, notification, facts, now)
    if not notification.url:
        return False
    if notification.endpoint_id is None:
        # Never had an endpoint (it was NOT_SENT at publish: webhooks disabled): give it
        # one, so ordering, health and the per-endpoint queue apply to it like any other.
        notification.endpoint_id, notification.sequence = next_sequence(
            session, notification.partner_id, notification.url, now)
    due = max(now, due_at) if due_at is not None else now
    start_fresh_cycle(notification, now, due=due)
    if (due - now).total_seconds() <= settings.sweep_horizon:
        notification.scheduled_for = due
        notification.enqueued_at = now
        nid = notification.id
        eta = due if due > now else None
        on_commit(session, lambda: enqueue_delivery(nid, Lane.MANUAL, eta))
    else:
        notification.scheduled_for = None  # the beat sweep sends it when it is near
    return True


def _lock(session: Session, notification_id: str) -> Notification:
    if not is_uuid(notification_id):
        raise NotificationNotFound()
    row = session.scalar(select(Notification).where(Notification.id == notification_id)
                         .with_for_update())
    if row is None:
        raise NotificationNotFound()
    return row


def operator_retry(session: Session, settings: Settings, notification_id: str,
                   now: datetime | None = None) -> Notification:
    """Retry one FAILED notification now, whatever its merchant limits. Commits nothing."""
    now = now or utcnow()
    notification = _lock(session, notification_id)
    if notification.status != NotificationStatus.FAILED:
        raise Conflict(NOT_FAILED)
    partner = session.get(Partner, notification.partner_id)
    assert partner is not None  # a foreign key
    check_pushed(partner)
    facts = check_deliverable_of(session, notification)  # endpoint disabled, webhooks off
    if not requeue(session, settings, notification, facts, now):
        raise Conflict(NO_URL)
    record_operator_action(session, notification, RequestKind.RETRY, now)
    session.flush()
    return notification


def operator_ignore(session: Session, notification_id: str,
                    now: datetime | None = None) -> Notification:
    """Take a notification out of the retry queue for good: the merchant's Ignore.

    Runs the partner API's own ``ignore`` (so the endpoint's queue moves on the same
    way), then relabels its audit row as an operator's. Commits nothing.
    """
    now = now or utcnow()
    owner = _lock(session, notification_id).partner_id
    notification = ignore(session, Principal(owner, None), notification_id, now)
    row = session.scalar(
        select(PartnerRequest)
        .where(PartnerRequest.notification_id == notification.id,
               PartnerRequest.kind == RequestKind.IGNORE,
               PartnerRequest.api_key_id.is_(None),
               PartnerRequest.outcome == ACCEPTED)
        .order_by(PartnerRequest.id.desc()).limit(1)
    )
    if row is not None:
        row.outcome = OPERATOR
    session.flush()
    return notification


# -- bulk replay ------------------------------------------------------------------------

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
            record_operator_action(session, row, RequestKind.RETRY, now)
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
