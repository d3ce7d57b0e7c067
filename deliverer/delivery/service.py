"""Delivering one notification: claim it, POST it, record what happened.

Three short steps, never a transaction open across the HTTP call:

1. ``claim``: a conditional UPDATE takes a lease on the row (on PostgreSQL after
   ``SELECT ... FOR UPDATE SKIP LOCKED``). Only one worker can hold it, so a duplicate
   broker message, a second beat or a redelivered task results in no second POST.
2. ``sender.send``: the HTTP POST, signed, with timeouts and a size cap.
3. ``record``: the attempt row and the notification's new state in one transaction;
   on failure the ladder gives the next attempt time.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from deliverer import lease, metrics
from deliverer.alerts import service as alerts
from deliverer.config import Settings
from deliverer.delivery import endpoint_queue, ladder, sender, signing, slow_lane
from deliverer.delivery.troubleshooting import FailureKind, error_payload
from deliverer.models import (
    Attempt,
    Endpoint,
    Event,
    Lane,
    Notification,
    NotificationStatus,
    Partner,
    Trigger,
    WebhookSettings,
    active_secrets,
    not_receiving_webhooks,
    table_of,
    utcnow,
)

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    job: DeliveryJob | None = None
    due_at: datetime | None = None


@dataclass(frozen=True)
class NextAttempt:
    notification_id: str
    lane: Lane
    due_at: datetime


@dataclass(frozen=True)
class AttemptOutcome:
    state: ClaimState
    status: str | None = None
    # Set when the next attempt is due within the sweep horizon: the caller enqueues it
    # (after the commit that recorded it). Later ones are left to the beat sweep.
    next_attempt: NextAttempt | None = None
    due_at: datetime | None = None


def _trigger_for(lane: str) -> Trigger:
    return Trigger.MANUAL if lane == Lane.MANUAL else Trigger.AUTOMATIC


# The statements of every delivery are built once, with bind parameters (``:now``,
# expanding ``:ids``): building them per call cost more CPU than executing them
# (SQLAlchemy's compiled cache spares only the compilation). They are Core statements
# and run on the session's connection, past the ORM's execute path.
_NOTIFICATIONS = table_of(Notification)
_N = _NOTIFICATIONS.c
_NOW: BindParameter[datetime] = bindparam("now")
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
_DUE_AND_FREE = and_(_N.status.in_(LIVE_STATUSES), _N.next_attempt_at <= _NOW,
                     lease.is_free(_N.lease_expires_at, _NOW))
_PICK = (select(_N.id, _DUE_AND_FREE.label("free")).where(_N.id.in_(_IDS))
         .with_for_update(skip_locked=True).cte("pick"))
_LEASE = (
    update(_NOTIFICATIONS)
    .where(_N.id == _PICK.c.id, _PICK.c.free)
    .values(lease_token=bindparam("token"), lease_expires_at=bindparam("expires"),
            # The message that brought us here is consumed; if we die, the sweep
            # re-enqueues the row as soon as the lease runs out.
            scheduled_for=None)
    .returning(_N.id)
)
_INSERT_ATTEMPTS = insert(table_of(Attempt))
_MARK_SENT = (
    update(_NOTIFICATIONS)
    .where(_N.id.in_(_IDS), _N.lease_token.in_(bindparam("tokens", expanding=True)))
    .values(status=NotificationStatus.SENT, sent_at=_NOW, next_attempt_at=None,
            scheduled_for=None, lease_token=None, lease_expires_at=None, held=False,
            attempt_count=_N.attempt_count + 1, updated_at=_NOW)
)
_ENDPOINTS_FOR_KEY_SHARE = (
    select(Endpoint.id, Endpoint.failing_since)
    .where(Endpoint.id.in_(bindparam("endpoint_ids", expanding=True)))
    .order_by(Endpoint.id)
    .with_for_update(key_share=True)
)
_JOBS = (
    select(_N.id, _N.url, _N.lane, _N.endpoint_id, Event.body, Endpoint.failing_since,
           Endpoint.disabled_at, Endpoint.disabled_reason, WebhookSettings.enabled,
           WebhookSettings.signing_secret,
           WebhookSettings.previous_secret, WebhookSettings.previous_secret_expires_at,
           Partner.active, Partner.flow)
    .join(Event, Event.id == _N.event_id)
    .join(Partner, Partner.id == _N.partner_id)
    .outerjoin(Endpoint, Endpoint.id == _N.endpoint_id)
    .outerjoin(WebhookSettings, WebhookSettings.partner_id == _N.partner_id)
    .where(_N.id.in_(_IDS))
)


def lease_jobs(session: Session, ids: Sequence[str], settings: Settings,
               now: datetime) -> tuple[list[str], list[DeliveryJob]]:
    """Lease every due, unleased row among ``ids`` and load what their POSTs need.

    Two statements: an UPDATE ... RETURNING fed by a CTE that locks the rows by primary
    key with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (rows another transaction holds are
    skipped, not waited for) and says of each whether it is due and free, and one SELECT
    of bodies, secrets and endpoint states. Rows of a disabled endpoint are stopped there
    and get no job. Returns (the leased ids, the jobs). Commits nothing.

    The due-and-free test is a column of the CTE, not a WHERE condition, so the only
    thing the planner can look rows up by is the primary key. With the test in the WHERE,
    statistics that saw ``next_attempt_at`` mostly in the future (a backlog of retries)
    made PostgreSQL drive the claim of one row through ``ix_notifications_due``, reading
    every due row and re-locking per row: 100-460 ms per claim, measured in the
    isolation benchmark. Evaluated in the same statement as the UPDATE, the test is
    still a compare-and-set on SQLite, which has no row locks.
    """
    token = str(uuid.uuid4())
    connection = session.connection()
    leased = list(connection.execute(_LEASE, {
        "ids": list(ids), "now": now, "token": token,
        "expires": now + timedelta(seconds=settings.lease_seconds)}).scalars())
    if not leased:
        return [], []
    rows = connection.execute(_JOBS, {"ids": leased}).all()
    jobs = []
    for r in rows:
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
                FailureKind.WEBHOOKS_DISABLED, "Webhooks are turned off"))
            continue
        jobs.append(DeliveryJob(
            notification_id=r.id, lease_token=token, url=r.url or "", body=r.body.encode(),
            secrets=active_secrets(r.signing_secret, r.previous_secret,
                                   r.previous_secret_expires_at, now),
            trigger=_trigger_for(r.lane), endpoint_id=r.endpoint_id,
            endpoint_failing=r.failing_since is not None, lane=r.lane,
        ))
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


def stop_for_good(session: Session, notification_id: str, error: dict[str, Any]) -> None:
    """No request, ever: the partner was deactivated or moved to polling after this was
    queued. NOT_SENT, as what is published for such partners is (an operator's replay
    sends it if that changes back)."""
    session.execute(
        update(Notification).where(Notification.id == notification_id)
        .values(status=NotificationStatus.NOT_SENT, next_attempt_at=None, lease_token=None,
                lease_expires_at=None, held=False, scheduled_for=None,
                latest_error_payload=error)
        .execution_options(synchronize_session=False)
    )


def hold_undeliverable(session: Session, notification_id: str,
                       error: dict[str, Any]) -> None:
    """No request while the endpoint is disabled (a 410 Gone) or the merchant has turned
    webhooks off: the notification is held, and saving the settings releases it
    (``webhook_settings.resume_deliveries``, then ``endpoint_queue.drain``)."""
    session.execute(
        update(Notification).where(Notification.id == notification_id)
        .values(status=NotificationStatus.FAILED, next_attempt_at=None, lease_token=None,
                lease_expires_at=None, held=True, latest_error_payload=error)
        .execution_options(synchronize_session=False)
    )


def perform(job: DeliveryJob, settings: Settings) -> sender.SendResult:
    """The HTTP part; no database access."""
    headers = {"webhook-id": job.notification_id}
    if job.secrets:
        headers = signing.signature_headers(job.secrets, job.notification_id, int(time.time()),
                                            job.body)
    if not job.url:
        result = sender.SendResult(started_at=utcnow(), duration_ms=0, success=False,
                                   error=error_payload(FailureKind.NO_URL, "No webhook URL"))
    else:
        result = sender.send(job.url, job.body, headers, sender_config(settings))
    metrics.observe_attempt(result.success, (result.error or {}).get("kind"),
                            result.duration_ms / 1000)
    return result


def perform_admitted(job: DeliveryJob, ticket: slow_lane.Ticket,
                     settings: Settings) -> sender.SendResult:
    """``perform``, then hand the slow lane's ticket back with how the send went."""
    slow_lane.GATE.started(ticket)
    try:
        result = perform(job, settings)
    except BaseException:
        slow_lane.GATE.done(ticket, None, settings)
        raise
    slow_lane.GATE.done(ticket, result, settings)
    return result


def sender_config(settings: Settings) -> sender.SenderConfig:
    return sender.SenderConfig(
        connect_timeout=settings.connect_timeout,
        total_timeout=settings.total_timeout,
        max_response_bytes=settings.max_response_bytes,
        allow_private_urls=settings.allow_private_urls,
        user_agent=settings.user_agent,
    )


def attempt_row(job: DeliveryJob, result: sender.SendResult) -> dict[str, Any]:
    """The attempt's row: every POST is recorded so, whoever made it."""
    return {"notification_id": job.notification_id, "trigger": job.trigger, "url": job.url,
            "started_at": result.started_at, "duration_ms": result.duration_ms,
            "success": result.success, "response_status": result.status_code,
            "response_body": result.body, "error_payload": result.error}


def is_plain_success(job: DeliveryJob, result: sender.SendResult) -> bool:
    """Delivered, to an endpoint that was not failing: nothing moves but this row."""
    return result.success and not job.endpoint_failing


def record_successes(session: Session,
                     done: Sequence[tuple[DeliveryJob, sender.SendResult]],
                     now: datetime) -> int:
    """Plain successes, in bulk (most deliveries): their attempts, and the notifications
    SENT, in three statements whatever their number. Returns how many rows were still
    leased by us (the others' attempts are kept on record; their lease holder decides).
    Commits nothing."""
    if not done:
        return 0
    connection = session.connection()
    # Table-level: a plain executemany, none of the ORM's bulk machinery.
    connection.execute(_INSERT_ATTEMPTS, [attempt_row(job, result) for job, result in done])
    updated = connection.execute(_MARK_SENT, {
        "ids": [job.notification_id for job, _ in done],
        "tokens": list({job.lease_token for job, _ in done}), "now": now}).rowcount
    # A plain success on an endpoint that became failing meanwhile still releases it
    # (see endpoint_failing_now).
    endpoint_ids = sorted({job.endpoint_id for job, _ in done if job.endpoint_id is not None})
    if endpoint_ids:
        for endpoint_id in endpoint_failing_now(session, endpoint_ids):
            endpoint_queue.on_recovery(session, endpoint_id, now)
    return updated


def record(session: Session, job: DeliveryJob, result: sender.SendResult, settings: Settings,
           now: datetime | None = None) -> AttemptOutcome:
    """Write the attempt and move the notification on. Commits nothing."""
    now = now or utcnow()
    if is_plain_success(job, result):
        if record_successes(session, [(job, result)], now) == 1:
            return AttemptOutcome(ClaimState.CLAIMED, status=NotificationStatus.SENT)
        log.warning("lease lost during delivery", extra={"notification_id": job.notification_id})
        return AttemptOutcome(ClaimState.BUSY)
    session.add(Attempt(**attempt_row(job, result)))
    row = session.execute(
        select(Notification).where(Notification.id == job.notification_id).with_for_update()
    ).scalar_one()
    if row.lease_token != job.lease_token:
        # We overran the lease and another worker took over: keep the attempt on record,
        # leave the state to the lease holder.
        log.warning("lease lost during delivery", extra={"notification_id": row.id})
        return AttemptOutcome(ClaimState.BUSY, status=row.status)

    row.lease_token = None
    row.lease_expires_at = None
    row.attempt_count += 1
    endpoint = _update_endpoint_health(session, job, result, now)
    if result.success:
        row.status = NotificationStatus.SENT
        row.sent_at = now
        row.next_attempt_at = None
        row.scheduled_for = None
        row.held = False
        return AttemptOutcome(ClaimState.CLAIMED, status=row.status)

    row.status = NotificationStatus.FAILED
    row.retry_attempts += 1
    row.latest_error_payload = result.error
    row.lane = Lane.RETRY
    due = ladder.next_attempt_at(settings, cycle_started_at=row.cycle_started_at,
                                 failed_at=now, failures=row.retry_attempts,
                                 retry_after=result.retry_after)
    row.next_attempt_at = due
    row.scheduled_for = None
    if endpoint is not None:
        if result.status_code == 410:
            _disable_endpoint(session, endpoint, row, now)
            return AttemptOutcome(ClaimState.CLAIMED, status=row.status)
        if result.retry_after:
            endpoint.retry_after_until = now + timedelta(
                seconds=result.retry_after * settings.time_scale)
        if row.sequence is not None:
            if due is None:
                session.flush()
                endpoint_queue.promote_next(session, endpoint.id, now)
            elif endpoint_queue.has_earlier_climber(session, endpoint.id, row.id, row.sequence):
                # An earlier notification is already probing this failing endpoint.
                row.held = True
                row.next_attempt_at = None
                return AttemptOutcome(ClaimState.CLAIMED, status=row.status)
            else:
                endpoint_queue.hold_later_climbers(session, endpoint.id, row.sequence, now)
        if (job.trigger == Trigger.AUTOMATIC and endpoint.alerted_at is None
                and row.retry_attempts > alerts.ALERT_AFTER_FAILED_RETRIES):
            endpoint.alerted_at = now
            alerts.raise_alert(
                session, endpoint, alerts.KIND_FAILING,
                f"Webhook endpoint {endpoint.url} has failed {row.retry_attempts} deliveries "
                f"in a row; last error: {(result.error or {}).get('message')}",
                notification_id=row.id, now=now)
    if due is not None and (due - now).total_seconds() <= settings.sweep_horizon:
        row.scheduled_for = due
        row.enqueued_at = now
        return AttemptOutcome(ClaimState.CLAIMED, status=row.status,
                              next_attempt=NextAttempt(row.id, Lane.RETRY, due), due_at=due)
    return AttemptOutcome(ClaimState.CLAIMED, status=row.status, due_at=due)


def _disable_endpoint(session: Session, endpoint: Endpoint, row: Notification,
                      now: datetime) -> None:
    """410 Gone: the receiver says the endpoint no longer exists. Stop, and say so. The
    notification is held, like those behind it: re-enabling the endpoint releases them.

    Notifications in flight when the first 410 arrives get theirs too: only the one that
    disables the endpoint raises the alert (the endpoint row is locked FOR UPDATE here, so
    of concurrent recorders exactly one sees it enabled)."""
    row.next_attempt_at = None
    row.held = True
    if endpoint.disabled_at is not None:
        return
    endpoint.disabled_at = now
    endpoint.disabled_reason = "The receiver answered 410 Gone"
    alerts.raise_alert(
        session, endpoint, alerts.KIND_DISABLED,
        f"Webhook endpoint {endpoint.url} answered 410 Gone and has been disabled. "
        "Update your webhook settings to enable it again.",
        notification_id=row.id, now=now)


def endpoint_failing_now(session: Session, endpoint_ids: list[int]) -> list[int]:
    """Which of these endpoints are failing *now*, not when their jobs were claimed.

    A failure recorded while a POST was in flight can make the endpoint failing and hold
    later notifications behind this one, the head; if the head's success then went by the
    claim-time snapshot, nothing would ever release them (they stayed held, FAILED with no
    next attempt, for good). A failure is recorded under the endpoint's FOR UPDATE lock,
    which conflicts with FOR KEY SHARE: whichever of the two commits second sees the
    other's outcome (the success recovers the endpoint, or the failure finds no head).
    """
    rows = session.connection().execute(_ENDPOINTS_FOR_KEY_SHARE,
                                        {"endpoint_ids": endpoint_ids}).all()
    return [endpoint_id for endpoint_id, failing_since in rows if failing_since is not None]


def _update_endpoint_health(session: Session, job: DeliveryJob, result: sender.SendResult,
                            now: datetime) -> Endpoint | None:
    """Failures load and update the endpoint; a healthy endpoint's success writes nothing."""
    if job.endpoint_id is None:
        return None
    if result.success:
        if job.endpoint_failing or endpoint_failing_now(session, [job.endpoint_id]):
            endpoint_queue.on_recovery(session, job.endpoint_id, now)
        return None
    endpoint = session.get(Endpoint, job.endpoint_id, with_for_update=True)
    if endpoint is None:
        return None
    endpoint.consecutive_failures += 1
    endpoint.last_failure_at = now
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    return endpoint


def deliver(notification_id: str, settings: Settings) -> AttemptOutcome:
    """Claim, send and record one attempt, each database step in its own transaction."""
    from deliverer.db import in_transaction, session_scope

    with session_scope() as session:
        claimed = claim(session, notification_id, settings)
    if claimed.job is None:
        return AttemptOutcome(claimed.state, due_at=claimed.due_at)
    job = claimed.job
    ticket = slow_lane.GATE.admit(slow_lane.key_for(job.endpoint_id, job.url), settings)
    if ticket is None:
        until = in_transaction(
            lambda session: slow_lane.defer(session, [notification_id], job.lease_token,
                                            settings),
            retry_for=settings.lease_seconds)
        return AttemptOutcome(ClaimState.DEFERRED, due_at=until)
    result = perform_admitted(job, ticket, settings)
    # The POST happened: record it even if the first try is a deadlock victim or meets a
    # database restart, or the webhook is sent again when the lease runs out.
    outcome = in_transaction(lambda session: record(session, job, result, settings),
                             retry_for=settings.lease_seconds)
    log.info(
        "attempt %s: %s",
        "delivered" if result.success else "failed",
        json.dumps(result.error) if result.error else result.status_code,
        extra={"notification_id": notification_id},
    )
    return outcome
