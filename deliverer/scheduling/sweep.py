"""The beat sweep: the outbox reader that drives the retry ladder.

Every few seconds it finds notifications due within a short horizon that have no
broker message yet and enqueues them with an ETA of their due time. No message carries
an ETA beyond the horizon: on Redis, long ETAs are redelivered after
``visibility_timeout`` and held in worker memory. Running it twice at once (two beats
by mistake) is harmless: rows are claimed with SKIP LOCKED and marked as scheduled, and
delivery itself takes a lease, so no webhook is sent twice.

Merchants' resend requests are an outbox too (``deliverer.notifications.resend``): the
sweep hands over again those whose message was lost or whose worker died.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from deliverer import lease, outbox
from deliverer.config import Settings
from deliverer.models import Lane, Notification, PartnerRequest, ResendStatus, utcnow
from deliverer.models.request_log import OPEN_RESENDS
from deliverer.notifications.resend import resend_lease

# The sweep recovers only resends requested within this long. Migration 0004 made the
# resend rows an outbox, and before it nothing ever finished a row its worker left
# PENDING or SENDING: most of those old rows were POSTed by a worker that died before
# recording it, and their merchants long since moved on. Without a bound the first sweep
# after the deploy would send every one of them again, however old. A day outlasts any
# broker or worker outage the recovery is for.
LOST_RESEND_MAX_AGE = timedelta(hours=24)


@dataclass(frozen=True)
class Due:
    notification_id: str
    lane: Lane
    due_at: datetime


def due_notifications_query(now: datetime, settings: Settings, limit: int):  # type: ignore[no-untyped-def]
    horizon = outbox.horizon(settings, now)
    grace = now - timedelta(seconds=settings.lost_message_grace)
    return (
        select(Notification.id, Notification.lane, Notification.next_attempt_at)
        .where(
            # Served by the partial index ix_notifications_due: O(rows due), not O(table).
            Notification.next_attempt_at.is_not(None),
            Notification.next_attempt_at <= horizon,
            lease.is_free(Notification.lease_expires_at, now),
            or_(
                Notification.scheduled_for.is_(None),
                Notification.scheduled_for != Notification.next_attempt_at,
                # A message should have been consumed long ago: it was lost.
                and_(Notification.next_attempt_at < grace, Notification.enqueued_at < grace),
            ),
        )
        .order_by(Notification.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


@dataclass(frozen=True)
class DueBatch:
    lane: Lane
    notification_ids: list[str]
    # The latest due time in the batch: the message never fires before any of them.
    eta: datetime


def group_due(due: list[Due], max_size: int, window: float = 0.05) -> list[DueBatch]:
    """Batch rows of one lane that fall due within ``window`` seconds of each other."""
    batches: list[DueBatch] = []
    open_by_lane: dict[Lane, tuple[datetime, list[Due]]] = {}

    def close(lane: Lane) -> None:
        _first, items = open_by_lane.pop(lane)
        batches.append(DueBatch(lane, [d.notification_id for d in items], items[-1].due_at))

    for item in sorted(due, key=lambda d: d.due_at):
        current = open_by_lane.get(item.lane)
        if current is not None and (
            len(current[1]) >= max_size
            or (item.due_at - current[0]).total_seconds() > window
        ):
            close(item.lane)
            current = None
        if current is None:
            open_by_lane[item.lane] = (item.due_at, [item])
        else:
            current[1].append(item)
    for lane in list(open_by_lane):
        close(lane)
    return batches


def collect_due(session: Session, settings: Settings, now: datetime | None = None,
                limit: int | None = None) -> list[Due]:
    """Mark due rows as scheduled and return them. The caller enqueues after commit."""
    now = now or utcnow()
    rows = session.execute(
        due_notifications_query(now, settings, limit or settings.sweep_batch)
    ).all()
    due = [Due(r.id, Lane(r.lane), r.next_attempt_at) for r in rows]
    if due:
        session.execute(
            update(Notification)
            .where(Notification.id.in_([d.notification_id for d in due]))
            .values(outbox.handed_over(Notification.next_attempt_at, now))
            .execution_options(synchronize_session=False)
        )
    return due


def _abandoned_resends(now: datetime, settings: Settings):  # type: ignore[no-untyped-def]
    """Open resend requests nothing will send unless the sweep acts: PENDING ones whose
    message was not taken within the lost-message grace of their last hand-over (the
    broker lost it; one it refused is marked handed over long ago,
    ``outbox.NO_MESSAGE``, and taken at the next sweep), and SENDING ones whose
    worker's lease ran out (it died after taking the request, or could not record its
    POST)."""
    grace = now - timedelta(seconds=settings.lost_message_grace)
    request = PartnerRequest
    return and_(
        text(OPEN_RESENDS),  # as the partial index says it, so SQLite uses it too
        or_(
            and_(request.delivery_status == ResendStatus.PENDING,
                 func.coalesce(request.enqueued_at, request.created_at) < grace),
            and_(request.delivery_status == ResendStatus.SENDING,
                 or_(request.lease_expires_at <= now,
                     # Taken before leases were recorded (migration 0004).
                     and_(request.lease_expires_at.is_(None),
                          request.created_at <= now - resend_lease(settings)))),
        ),
    )


def _take_resends(session: Session, where: Any, limit: int) -> list[int]:
    """The ids of at most ``limit`` resend requests matching ``where``, oldest first,
    row-locked (none another transaction holds)."""
    return list(session.scalars(
        select(PartnerRequest.id).where(where).order_by(PartnerRequest.id).limit(limit)
        .with_for_update(skip_locked=True)
    ))


def collect_lost_resends(session: Session, settings: Settings, now: datetime | None = None,
                         limit: int | None = None) -> list[int]:
    """The abandoned resend requests (``_abandoned_resends``) made within
    ``LOST_RESEND_MAX_AGE``, at most ``limit``, the oldest first: handed over again, at
    least once (older ones are ``expire_old_resends``'). Marks them PENDING and
    re-enqueued now, and returns their ids; the caller enqueues them after the commit.
    """
    now = now or utcnow()
    ids = _take_resends(
        session, and_(_abandoned_resends(now, settings),
                      PartnerRequest.created_at >= now - LOST_RESEND_MAX_AGE),
        limit or settings.sweep_batch)
    if ids:
        session.execute(
            update(PartnerRequest)
            .where(PartnerRequest.id.in_(ids))
            .values(delivery_status=ResendStatus.PENDING, enqueued_at=now,
                    lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
    return ids


def expire_old_resends(session: Session, settings: Settings, now: datetime | None = None,
                       limit: int = 1_000) -> int:
    """Mark EXPIRED, at most ``limit`` at a time, the abandoned resend requests made
    before ``LOST_RESEND_MAX_AGE``, which ``collect_lost_resends`` no longer hands over:
    without it they would read PENDING in the audit trail for ever, and stay in the open
    resends' index that every sweep reads. Given up, outcome unknown: a SENDING one may
    have been POSTed by a worker that died before recording it.

    Left to finish, as not abandoned: one handed over again within the lost-message
    grace, its message perhaps about to be taken, and a SENDING one whose lease still
    runs, its worker POSTing it now. Pass the ``now`` the sweep's recovery used."""
    now = now or utcnow()
    stale = and_(_abandoned_resends(now, settings),
                 PartnerRequest.created_at < now - LOST_RESEND_MAX_AGE)
    ids = _take_resends(session, stale, limit)
    if not ids:
        return 0
    # The conditions again: SQLite takes no row locks, and a worker may have taken a row
    # since it was read.
    result = session.execute(
        update(PartnerRequest)
        .where(PartnerRequest.id.in_(ids), stale)
        .values(delivery_status=ResendStatus.EXPIRED, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
