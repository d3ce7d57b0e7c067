"""Claiming notifications for delivery: a lease on each due row, and what its POST needs.

A conditional UPDATE takes the lease (on PostgreSQL after ``SELECT ... FOR UPDATE SKIP
LOCKED``). Only one worker can hold it, so a duplicate broker message, a second beat or
a redelivered task results in no second POST. The claim commits before the HTTP call.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import FromClause, Select, and_, bindparam, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from deliverer import lease
from deliverer.config import Settings
from deliverer.delivery import endpoint_queue, ladder, pacing
from deliverer.delivery.troubleshooting import WEBHOOKS_TURNED_OFF, FailureKind, error_payload
from deliverer.delivery.undeliverable import (
    ENDPOINT_DELETED,
    hold_undeliverable,
    stop_for_good,
)
from deliverer.models import (
    Endpoint,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    Trigger,
    WebhookSettings,
    not_receiving_webhooks,
    signing_secrets,
    table_of,
    utcnow,
)
from deliverer.models.in_list import in_list
from deliverer.prepared import prepared

LIVE_STATUSES = (NotificationStatus.PENDING, NotificationStatus.FAILED)


class ClaimState(StrEnum):
    CLAIMED = "claimed"
    NOT_DUE = "not_due"  # a message arrived early; the row is due later
    BUSY = "busy"  # another worker holds the lease
    LOCKED = "locked"  # another transaction holds the row lock right now (a request, a sweep)
    FINAL = "final"  # SENT, NOT_SENT or exhausted: nothing to do
    MISSING = "missing"
    DEFERRED = "deferred"  # claimed, but its endpoint is slow and at its cap (slow lane)


@dataclass(frozen=True)
class DeliveryJob:
    notification_id: str
    lease_token: str
    url: str
    body: bytes
    secrets: list[str]
    trigger: Trigger
    endpoint_id: int | None
    endpoint_failing: bool
    # The queue its message came from, for a job handed back unsent (batch.deliver_many).
    lane: str = Lane.FIRST
    # Until when the lease is ours: after a fresh cycle voided it (``cycle``), the time
    # alone says the row is still held for this job (``voided``).
    lease_expires_at: datetime | None = None
    # Its endpoint's URL at the claim: a batch's late POST is not sent if it has changed
    # since (``still_there``), and a failure recorded after it changed is not the new
    # URL's (``failure``).
    endpoint_url: str | None = None

    def moved(self, endpoint_url_now: str | None) -> bool:
        """Whether its endpoint is at another URL now (None: it takes no deliveries now)
        than at the claim."""
        return self.endpoint_url is not None and endpoint_url_now != self.endpoint_url


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    job: DeliveryJob | None = None
    due_at: datetime | None = None


def _trigger_for(lane: str) -> Trigger:
    return Trigger.MANUAL if lane == Lane.MANUAL else Trigger.AUTOMATIC


# The statements of every delivery are built once, with bind parameters (``:now``, the
# list ``:ids``): building them per call cost more CPU than executing them (SQLAlchemy's
# compiled cache spares only the compilation). They are Core statements and run on the
# session's connection, past the ORM's execute path; the hot ones prepared
# (``deliverer.prepared``) in the transactions that are run again (``in_transaction``).
_NOTIFICATIONS = table_of(Notification)
_N = _NOTIFICATIONS.c
_NOW: BindParameter[datetime] = bindparam("now")
_DUE_AND_FREE = and_(_N.status.in_(LIVE_STATUSES), _N.next_attempt_at <= _NOW,
                     lease.is_free(_N.lease_expires_at, _NOW))
_PICK = (select(_N.id, _DUE_AND_FREE.label("free")).where(in_list(_N.id, "ids"))
         .with_for_update(skip_locked=True).cte("pick"))
_LEASING = (
    update(_NOTIFICATIONS)
    .where(_N.id == _PICK.c.id, _PICK.c.free)
    .values(lease_token=bindparam("token"), lease_expires_at=bindparam("expires"),
            # The message that brought us here is consumed; if we die, the sweep
            # re-enqueues the row as soon as the lease runs out.
            scheduled_for=None)
)
_LEASE = _LEASING.returning(_N.id)


def _jobs_of(rows: FromClause) -> Select[Any]:
    """What the POSTs of ``rows`` (notifications, or the lease's RETURNING) need."""
    return (
        select(rows.c.id, rows.c.url, rows.c.lane, rows.c.endpoint_id, rows.c.next_attempt_at,
               rows.c.cycle_started_at, Event.body,
               Endpoint.failing_since, Endpoint.disabled_at, Endpoint.disabled_reason,
               Endpoint.deleted_at, WebhookSettings.enabled, WebhookSettings.signing_secret,
               WebhookSettings.previous_secret, WebhookSettings.previous_secret_expires_at,
               Partner.active, Partner.flow,
               Endpoint.signing_secret.label("own_secret"),
               Endpoint.previous_secret.label("own_previous"),
               Endpoint.previous_secret_expires_at.label("own_previous_expires_at"),
               Endpoint.rate_limit, Endpoint.retry_after_until,
               Endpoint.url.label("endpoint_url"))
        .select_from(rows)
        .join(Event, Event.id == rows.c.event_id)
        .join(Partner, Partner.id == rows.c.partner_id)
        .outerjoin(Endpoint, Endpoint.id == rows.c.endpoint_id)
        .outerjoin(WebhookSettings, WebhookSettings.partner_id == rows.c.partner_id)
    )


_JOBS = _jobs_of(_NOTIFICATIONS).where(in_list(_N.id, "ids"))
# PostgreSQL: the lease and the load in one statement (a round trip fewer per claim).
# Its joins read the endpoints and settings as the statement began (just before the
# pick's locks), not a moment after the lease as a second statement would.
_LEASE_JOBS = prepared(_jobs_of(_LEASING.returning(
    _N.id, _N.url, _N.lane, _N.endpoint_id, _N.next_attempt_at, _N.cycle_started_at,
    _N.event_id, _N.partner_id).cte("leased")))


def lease_jobs(session: Session, ids: Sequence[str], settings: Settings,
               now: datetime) -> tuple[list[str], list[DeliveryJob]]:
    """Lease every due, unleased row among ``ids`` and load what their POSTs need.

    An UPDATE ... RETURNING fed by a CTE that locks the rows by primary key with ``FOR
    UPDATE SKIP LOCKED`` on PostgreSQL (rows another transaction holds are skipped, not
    waited for) and says of each whether it is due and free, and a SELECT of bodies,
    secrets and endpoint states: on PostgreSQL one statement, the UPDATE in its WITH.
    Rows of a disabled endpoint are stopped there and get no job. Rows above their
    endpoint's rate limit are given back, due at its next slot (``pacing``: more
    statements only when a row has a limit), and are not among the leased: callers tell
    them NOT_DUE. Returns (the leased ids, the jobs). Commits nothing.

    The due-and-free test is a column of the CTE, not a WHERE condition, so the only
    thing the planner can look rows up by is the primary key. With the test in the WHERE,
    statistics that saw ``next_attempt_at`` mostly in the future (a backlog of retries)
    made PostgreSQL drive the claim of one row through ``ix_notifications_due``, reading
    every due row and re-locking per row (the isolation benchmark shows it). Evaluated in
    the same statement as the UPDATE, the test is still a compare-and-set on SQLite,
    which has no row locks.
    """
    token = str(uuid.uuid4())
    connection = session.connection()
    expires = now + timedelta(seconds=settings.lease_seconds)
    lease_params = {"ids": list(ids), "now": now, "token": token, "expires": expires}
    if connection.dialect.name == "postgresql":
        rows = connection.execute(_LEASE_JOBS, lease_params).all()
        leased = [r.id for r in rows]
    else:  # SQLite: no UPDATE in a WITH
        leased = list(connection.execute(_LEASE, lease_params).scalars())
        rows = connection.execute(_JOBS, {"ids": leased}).all() if leased else []
    if not leased:
        return [], []
    jobs = []
    paced = []
    for r in rows:
        if r.deleted_at is not None:
            # Published while its endpoint was being deleted, or failed in flight then:
            # as the deletion made everything else the endpoint held.
            stop_for_good(session, r.id, error_payload(FailureKind.ENDPOINT_DISABLED,
                                                       ENDPOINT_DELETED))
            continue
        if r.disabled_at is not None:
            hold_undeliverable(session, r.id, error_payload(
                FailureKind.ENDPOINT_DISABLED, r.disabled_reason or "Endpoint disabled"))
            continue
        not_receiving = not_receiving_webhooks(r.active, r.flow)
        if not_receiving is not None:
            stop_for_good(session, r.id, error_payload(FailureKind.NOT_A_WEBHOOK_PARTNER,
                                                       not_receiving))
            continue
        if r.enabled is False:  # None: a partner without settings, sent as before
            hold_undeliverable(session, r.id, error_payload(
                FailureKind.WEBHOOKS_DISABLED, WEBHOOKS_TURNED_OFF))
            continue
        if (r.lane == Lane.RETRY and r.endpoint_id is not None
                and r.next_attempt_at > ladder.cycle_deadline(settings, r.cycle_started_at)):
            # Made its queue's head after its 30 days had run out (the head before it
            # exhausted, a recovery): it was POSTed once more, each in turn, one a sweep
            # (the ladder try). Exhausted instead, with those behind it that ran out too.
            endpoint_queue.exhaust_past_cycle(session, settings, r.id, r.endpoint_id, now)
            continue
        if (r.retry_after_until is not None and r.retry_after_until > now
                and r.lane != Lane.MANUAL):
            # The receiver asked for a pause (429/503 Retry-After, ``failure``): an
            # automatic send waits in its queue, behind the one that got it, and goes in
            # order once a delivery succeeds (``endpoint_queue.drain``). A merchant's
            # retry goes.
            hold_undeliverable(session, r.id, error_payload(
                FailureKind.ENDPOINT_PAUSED,
                f"Held: the endpoint asked for a pause (Retry-After) until "
                f"{r.retry_after_until.isoformat(timespec='seconds')}"))
            continue
        jobs.append(DeliveryJob(
            notification_id=r.id, lease_token=token, url=r.url or "", body=r.body.encode(),
            secrets=signing_secrets(
                (r.own_secret, r.own_previous, r.own_previous_expires_at),
                (r.signing_secret, r.previous_secret, r.previous_secret_expires_at), now),
            trigger=_trigger_for(r.lane), endpoint_id=r.endpoint_id,
            endpoint_failing=r.failing_since is not None, lane=r.lane,
            lease_expires_at=expires, endpoint_url=r.endpoint_url,
        ))
        if r.rate_limit:
            paced.append(pacing.Paced(r.id, r.endpoint_id, r.rate_limit))
    if paced:
        waiting = pacing.pace(session, paced, token, settings, now)
        leased = [i for i in leased if i not in waiting]
        jobs = [job for job in jobs if job.notification_id not in waiting]
    return leased, jobs


def claim(session: Session, notification_id: str, settings: Settings,
          now: datetime | None = None) -> Claim:
    """Take the lease on a due notification. Commits nothing; the caller commits."""
    now = now or utcnow()
    leased, jobs = lease_jobs(session, [notification_id], settings, now)
    if jobs:
        return Claim(ClaimState.CLAIMED, job=jobs[0])
    if leased:
        return Claim(ClaimState.FINAL)  # its endpoint is disabled
    # Not leased: say why, so that the task knows whether to come back.
    row = session.execute(
        select(Notification.status, Notification.next_attempt_at,
               Notification.lease_expires_at)
        .where(Notification.id == notification_id)
        .with_for_update(skip_locked=True)
    ).one_or_none()
    if row is None:
        exists = session.scalar(select(Notification.id).where(Notification.id == notification_id))
        return Claim(ClaimState.LOCKED if exists else ClaimState.MISSING)
    if row.status not in LIVE_STATUSES or row.next_attempt_at is None:
        return Claim(ClaimState.FINAL)
    if not lease.ran_out(row.lease_expires_at, now):
        return Claim(ClaimState.BUSY)  # another worker holds the lease
    if row.next_attempt_at > now:
        return Claim(ClaimState.NOT_DUE, due_at=row.next_attempt_at)
    # Due and free now: the lease skipped it because another transaction held its row
    # lock a moment ago (a merchant's request, the sweep). Come back, do not drop it.
    return Claim(ClaimState.LOCKED)
