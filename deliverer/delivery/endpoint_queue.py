"""Per-endpoint retry queues (seed 003): one notification probes a failing endpoint.

While an endpoint is failing, only its earliest failed notification (the head) climbs
the retry ladder. Later failures are *held*: FAILED, with no attempt of their own, so a
dead server is probed by one request at a time instead of one per notification. Fresh
notifications are still tried once and join the queue if they fail.

As soon as any delivery to the endpoint succeeds, the head is retried at once and the
beat sweep releases the held notifications in sequence order at a bounded rate
(``drain_rate`` per second), so a server that just recovered is not flooded.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, exists, or_, select, update
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from deliverer import lease
from deliverer.config import Settings
from deliverer.delivery import ladder
from deliverer.models import (
    Endpoint,
    Lane,
    Notification,
    NotificationStatus,
    WebhookSettings,
    locked_in_id_order,
)

# Held notifications a claim exhausts beside the one it found past its cycle.
EXHAUST_AT_ONCE = 100
# Held ones tried in turn when the one read is released by someone else meanwhile; past
# them the queue repair (every minute) is the net.
RELEASE_TRIES = 5


def _climbing(endpoint_id: int | QueryableAttribute[int]) -> tuple[ColumnElement[bool], ...]:
    """Conditions for the endpoint's notifications climbing the ladder (its head)."""
    return (
        Notification.endpoint_id == endpoint_id,
        Notification.status == NotificationStatus.FAILED,
        Notification.held.is_(False),
        Notification.next_attempt_at.is_not(None),
    )


def probe_now(session: Session, endpoint_id: int, now: datetime) -> None:
    """The endpoint's head (its notification on the ladder) is due now, not at the end
    of its backoff: the endpoint is at another URL, which has not failed yet."""
    session.execute(
        update(Notification).where(*_climbing(endpoint_id))
        .values(next_attempt_at=now, scheduled_for=None)
        .execution_options(synchronize_session=False))


def has_earlier_climber(session: Session, endpoint_id: int, notification_id: str,
                        sequence: int) -> bool:
    return bool(session.scalar(select(exists().where(
        *_climbing(endpoint_id),
        Notification.id != notification_id,
        Notification.sequence < sequence,
    ))))


def earliest_held_before(session: Session, endpoint_id: int, sequence: int) -> str | None:
    """The endpoint's earliest held notification numbered before ``sequence``, if any."""
    return session.scalar(
        select(Notification.id)
        .where(Notification.endpoint_id == endpoint_id, Notification.held.is_(True),
               Notification.sequence < sequence)
        .order_by(Notification.sequence).limit(1))


def hold_later_climbers(session: Session, endpoint_id: int, sequence: int,
                        now: datetime) -> None:
    """The new head makes later notifications on the ladder wait behind it."""
    session.execute(
        update(Notification)
        .where(
            *_climbing(endpoint_id),
            Notification.sequence > sequence,
            Notification.lane != Lane.MANUAL,
            lease.is_free(Notification.lease_expires_at, now),
        )
        .values(held=True, next_attempt_at=None, scheduled_for=None)
        .execution_options(synchronize_session=False)
    )


def hold_climbers(session: Session, endpoint_id: int, now: datetime) -> None:
    """The endpoint is disabled: what climbs its ladder is held with the rest (one in
    flight is held when its outcome is recorded, or at its next claim)."""
    session.execute(
        update(Notification)
        .where(*_climbing(endpoint_id), lease.is_free(Notification.lease_expires_at, now))
        .values(held=True, next_attempt_at=None, scheduled_for=None)
        .execution_options(synchronize_session=False)
    )


def promote_next(session: Session, endpoint_id: int, now: datetime,
                 due: datetime | None = None) -> None:
    """The head left the ladder (exhausted, ignored, or sent at a URL the endpoint has
    left): the next held one takes its place, due at ``due`` (now if None)."""
    for _ in range(RELEASE_TRIES):
        # Again on each try: what released the one read may have made a head.
        if session.scalar(select(exists().where(*_climbing(endpoint_id)))):
            return
        next_id = session.scalar(
            select(Notification.id)
            .where(Notification.endpoint_id == endpoint_id, Notification.held.is_(True))
            .order_by(Notification.sequence).limit(1))
        if next_id is None or release_held(session, next_id, now if due is None else due):
            return


def release_held(session: Session, notification_id: str, due: datetime | None) -> bool:
    """A held notification climbs the ladder again, due at ``due``; False if it is no
    longer held. Between reading it held and this UPDATE, a merchant's retry or ignore
    may have committed: on PostgreSQL the UPDATE waits for that row and checks ``held``
    again, where overwriting it turned an accepted manual retry back into an automatic
    one two minutes away (a flaky test's race)."""
    released = session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.held.is_(True))
        .values(held=False, next_attempt_at=due, lane=Lane.RETRY, scheduled_for=None)
        .execution_options(synchronize_session=False))
    return bool(released.rowcount)  # type: ignore[attr-defined]


def exhaust_past_cycle(session: Session, settings: Settings, notification_id: str,
                       endpoint_id: int, now: datetime) -> None:
    """``notification_id``, due after its cycle's 30 days, is exhausted without an
    attempt, as are the endpoint's next held ones whose cycles have run out too (a
    bounded number, in sequence order, skipping rows another transaction holds: this runs
    in a claim); the earliest held one left takes its place, and meets this again if its
    cycle ran out as well."""
    expired = (select(Notification.id)
               .where(Notification.endpoint_id == endpoint_id, Notification.held.is_(True),
                      Notification.cycle_started_at < ladder.oldest_live_cycle(settings, now))
               .order_by(Notification.sequence).limit(EXHAUST_AT_ONCE)
               .with_for_update(skip_locked=True))
    ids = [notification_id, *session.scalars(expired)]
    session.execute(
        update(Notification).where(Notification.id.in_(ids))
        .values(held=False, next_attempt_at=None, scheduled_for=None, lease_token=None,
                lease_expires_at=None, lane=Lane.RETRY)
        .execution_options(synchronize_session=False))
    promote_next(session, endpoint_id, now)


def hold(notification: Notification) -> bool:
    """The loaded ``notification`` waits behind its endpoint's head (held: no attempt of
    its own). Returns True, as ``join_after_failure`` answers "held"."""
    notification.held = True
    notification.next_attempt_at = None
    return True


def join_after_failure(session: Session, endpoint_id: int, notification: Notification,
                       now: datetime) -> bool:
    """A failed notification of the endpoint, its next attempt set (None: exhausted),
    takes its place in the queue; returns whether it is now held.

    Exhausted, it leaves the ladder and the next held one takes its place. Behind an
    earlier notification that already probes the endpoint, it is held. Behind earlier
    held ones (the endpoint recovered and failed again before they drained), it is held
    too, and the earliest of them probes the endpoint in its place, at its next time:
    a fresh failure took the head, and a steady flow of them kept hundreds of older
    webhooks waiting (an upgrade try). Otherwise it is the head, and later ones on the
    ladder wait behind it."""
    if notification.sequence is None:
        return False
    if notification.next_attempt_at is None:
        session.flush()
        promote_next(session, endpoint_id, now)
    elif has_earlier_climber(session, endpoint_id, notification.id, notification.sequence):
        return hold(notification)
    else:
        due = notification.next_attempt_at
        for attempt in range(RELEASE_TRIES):
            if attempt and has_earlier_climber(session, endpoint_id, notification.id,
                                               notification.sequence):
                # What released the one read made a head before this one.
                return hold(notification)
            earlier = earliest_held_before(session, endpoint_id, notification.sequence)
            if earlier is None:
                break
            if release_held(session, earlier, due):
                hold_later_climbers(session, endpoint_id, notification.sequence, now)
                return hold(notification)
        hold_later_climbers(session, endpoint_id, notification.sequence, now)
    return False


def on_recovery(session: Session, endpoint_id: int, now: datetime) -> None:
    """A delivery succeeded: retry the head now; held ones drain via the sweep.

    A head already due is offered to the sweep again too: its message may be lost (a
    worker killed, a broker restart), and the sweep would otherwise wait the lost-message
    grace while the held ones behind it drained first."""
    session.execute(
        update(Notification)
        .where(*_climbing(endpoint_id), lease.is_free(Notification.lease_expires_at, now))
        .values(next_attempt_at=case((Notification.next_attempt_at > now, now),
                                     else_=Notification.next_attempt_at),
                scheduled_for=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Endpoint).where(Endpoint.id == endpoint_id)
        .values(failing_since=None, consecutive_failures=0, last_success_at=now,
                alerted_at=None, draining=True, retry_after_until=None)
    )


def drain(session: Session, settings: Settings, now: datetime, max_endpoints: int = 100) -> int:
    """Release held notifications of recovered endpoints, ``drain_rate`` per second.

    Called by every beat sweep; each call releases one sweep interval's worth per
    endpoint, spread over that interval. Returns how many were released.
    """
    per_sweep = max(1, int(settings.drain_rate * settings.sweep_interval))
    spacing = 1.0 / settings.drain_rate
    endpoints = session.scalars(
        select(Endpoint)
        .join(WebhookSettings, WebhookSettings.partner_id == Endpoint.partner_id, isouter=True)
        .where(Endpoint.draining.is_(True), Endpoint.failing_since.is_(None),
               Endpoint.disabled_at.is_(None),
               # Webhooks turned off: what drain released would only be held again at its
               # claim, every sweep. It resumes when they are turned on.
               WebhookSettings.enabled.is_not(False))
        .limit(max_endpoints)
        .with_for_update(skip_locked=True, of=Endpoint)
    ).all()
    released = 0
    for endpoint in endpoints:
        rows = session.execute(
            select(Notification.id, Notification.cycle_started_at)
            .where(Notification.endpoint_id == endpoint.id, Notification.held.is_(True))
            .order_by(Notification.sequence)
            .limit(per_sweep)
        ).all()
        for i, (notification_id, cycle_started_at) in enumerate(rows):
            due: datetime | None = now + timedelta(seconds=i * spacing)
            if due is not None and due > ladder.cycle_deadline(settings, cycle_started_at):
                due = None  # waited past its 30 days: exhausted
            released += release_held(session, notification_id, due)
        if len(rows) < per_sweep:
            endpoint.draining = False
    return released


def repair(session: Session, now: datetime, *, partner_id: str | None = None,
           max_endpoints: int = 100) -> int:
    """Release queues that nothing else would: held notifications on an enabled endpoint
    that is neither draining nor probed by a head of its own (a failing one, draining or
    not: its drain waits for a success that only a head could bring). Returns how many
    endpoints.

    Every path that holds or releases notifications keeps a queue moving (a head climbs,
    a success drains, a retry or an ignore promotes the next); this is the net under
    them. A claim that read "webhooks off" just before the merchant turned them on again
    commits its hold after ``resume_deliveries`` has looked: that row would otherwise be
    held for good. Healthy endpoints are set draining; failing ones without a head, and
    with nothing PENDING that could fail and become one, get the next held one promoted.
    With ``partner_id``, only that partner's endpoints (``resume_deliveries``).
    """
    query = (
        select(Endpoint.id, Endpoint.failing_since)
        .join(WebhookSettings, WebhookSettings.partner_id == Endpoint.partner_id, isouter=True)
        .where(Endpoint.disabled_at.is_(None),
               or_(Endpoint.draining.is_(False), Endpoint.failing_since.is_not(None)),
               WebhookSettings.enabled.is_not(False),
               exists().where(Notification.endpoint_id == Endpoint.id,
                              Notification.held.is_(True)),
               or_(Endpoint.failing_since.is_(None),
                   ~exists().where(*_climbing(Endpoint.id)).correlate(Endpoint)
                   & ~exists().where(Notification.endpoint_id == Endpoint.id,
                                     Notification.status == NotificationStatus.PENDING)
                   .correlate(Endpoint)))
        .order_by(Endpoint.id)
        .limit(max_endpoints)
    )
    if partner_id is not None:
        query = query.where(Endpoint.partner_id == partner_id)
    endpoints = session.execute(query).all()
    healthy = [endpoint_id for endpoint_id, failing_since in endpoints if failing_since is None]
    if healthy:
        session.execute(update(Endpoint).where(locked_in_id_order(
            Endpoint.id.in_(healthy), Endpoint.failing_since.is_(None))).values(draining=True))
    for endpoint_id, failing_since in endpoints:
        if failing_since is not None:
            promote_next(session, endpoint_id, now)
    return len(endpoints)
