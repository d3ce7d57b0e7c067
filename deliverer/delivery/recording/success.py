"""Recording successful deliveries: most of them in bulk, a few statements whatever their
number; a success on a failing endpoint recovers it (``recover``).
And the endpoint locks every record transaction takes first (``lock_endpoints``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import BindParameter, Select, bindparam, insert, select, update
from sqlalchemy.orm import Session

from deliverer.delivery import endpoint_queue
from deliverer.delivery.claim import DeliveryJob
from deliverer.delivery.sending import sender
from deliverer.delivery.voided import release_voided
from deliverer.models import Attempt, Endpoint, Notification, NotificationStatus, table_of
from deliverer.models.in_list import in_list
from deliverer.prepared import prepared


def sent_values(now: Any) -> dict[str, Any]:
    """A delivered notification: SENT at ``now``, nothing ahead of it, its lease given
    back. Bulk successes and a success recorded alone (``record``) both write these."""
    return {"status": NotificationStatus.SENT, "sent_at": now, "next_attempt_at": None,
            "scheduled_for": None, "lease_token": None, "lease_expires_at": None,
            "held": False, "updated_at": now}


_NOTIFICATIONS = table_of(Notification)
_N = _NOTIFICATIONS.c
_NOW: BindParameter[datetime] = bindparam("now")
_INSERT_ATTEMPTS = insert(table_of(Attempt))
_MARK_SENT = prepared(
    update(_NOTIFICATIONS)
    .where(in_list(_N.id, "ids"), in_list(_N.lease_token, "tokens"))
    .values(**sent_values(_NOW), attempt_count=_N.attempt_count + 1)
    .returning(_N.id, _N.url)
)
# A move repoints what its endpoint holds, in flight too (``partners/relocation.py``): a
# POST claimed before it, delivered at the URL it left, says where it went.
_DELIVERED_AT = (update(_NOTIFICATIONS).where(_N.id == bindparam("nid"))
                 .values(url=bindparam("delivered_url")))
# A POST whose lease was lost meanwhile (taken over, voided by a fresh cycle, or the
# notification ignored) is still an attempt of its notification: ``attempt_count``
# counts its attempt rows.
_COUNT_ATTEMPTS = (update(_NOTIFICATIONS).where(_N.id == bindparam("nid"))
                   .values(attempt_count=_N.attempt_count + bindparam("n")))


def count_lost(session: Session, jobs: Sequence[DeliveryJob]) -> None:
    """The attempts of POSTs whose lease was lost meanwhile (a job per POST); a voided
    lease of theirs is freed (``voided.release_voided``). Commits nothing."""
    lost = Counter(job.notification_id for job in jobs)
    session.connection().execute(_COUNT_ATTEMPTS, [{"nid": nid, "n": n}
                                                   for nid, n in sorted(lost.items())])
    release_voided(session, jobs)


def _locking(exclusive: bool) -> Select[int, datetime | None]:
    query = (select(Endpoint.id, Endpoint.failing_since)
             .where(in_list(Endpoint.id, "endpoint_ids"))
             .order_by(Endpoint.id))  # rows are locked in this order
    # FOR UPDATE, or FOR KEY SHARE: SQLAlchemy's key_share=True alone is FOR NO KEY
    # UPDATE, which a publish's UPDATE of the row (its sequence number) waits for.
    return prepared(query.with_for_update() if exclusive
                    else query.with_for_update(read=True, key_share=True))


_LOCK_ENDPOINTS = {True: _locking(True), False: _locking(False)}


def attempt_row(job: DeliveryJob, result: sender.SendResult) -> dict[str, Any]:
    """The attempt's row: every POST is recorded so, whoever made it."""
    return {"notification_id": job.notification_id, "trigger": job.trigger, "url": job.url,
            "started_at": result.started_at, "duration_ms": result.duration_ms,
            "success": result.success, "response_status": result.status_code,
            "response_body": result.body, "error_payload": result.error}


def is_plain_success(job: DeliveryJob, result: sender.SendResult) -> bool:
    """Delivered, to an endpoint that was not failing: nothing moves but this row."""
    return result.success and not job.endpoint_failing


def lock_endpoints(session: Session,
                   done: Sequence[tuple[DeliveryJob, sender.SendResult]]) -> set[int]:
    """Lock the endpoints of these outcomes, in one pass in id order before anything
    else is written; returns those failing *now*, not when their jobs were claimed.

    FOR UPDATE an endpoint that one of the outcomes moves (a failure; a success on an
    endpoint failing at its claim): its state, queue and alerts change under that lock,
    one recorder at a time. FOR KEY SHARE one with plain successes alone, which only read
    whether it is failing now: a failure recorded while one of them was in flight can
    make the endpoint failing and hold later notifications behind it, the head; had the
    head's success gone by the claim-time snapshot, nothing would ever release them
    (held, FAILED with no next attempt, for good). FOR KEY SHARE conflicts with the
    failure's FOR UPDATE, so whichever of the two commits second sees the other's
    outcome (the success recovers the endpoint, or the failure finds no head). Unlike FOR
    NO KEY UPDATE it lets a publish UPDATE the row (sequence number, wake-up mark), and a
    claim (wake-up mark, rate-limit slot): neither waits for a record transaction that
    merely shares a healthy endpoint (a worker's threads share them, ``together.py``).

    The strongest lock each endpoint needs, first and in id order, because a lock taken
    weak and strengthened later deadlocks: two transactions that held FOR KEY SHARE for a
    success each waited for the other's to take FOR UPDATE for a failure of the same
    endpoint (in the beat fault test, often enough that record transactions ran out of
    retries and their webhooks were sent again). So does a recovery's UPDATE of an
    endpoint held FOR KEY SHARE (one that became failing after the claim) when this
    transaction holds another endpoint too: a publish or a claim that took the first FOR
    NO KEY UPDATE and waits for the second (58 deadlocks in the operator try, 20 publishes
    answered 503). Several endpoints are therefore locked after a savepoint, and if one
    locked weak turns out failing, rolled back to it and locked again with that one FOR
    UPDATE. Alone, a weak lock's upgrade waits for a transaction that waits for nothing
    of this one's. Commits nothing."""
    moves: dict[int, bool] = {}
    for job, result in done:
        if job.endpoint_id is not None:
            moves[job.endpoint_id] = (moves.get(job.endpoint_id, False)
                                      or not is_plain_success(job, result))
    connection = session.connection()
    if len(moves) < 2 or all(moves.values()) or connection.dialect.name != "postgresql":
        # One endpoint, or none locked weak: no upgrade. SQLite: one writer at a time.
        return _lock(session, moves)
    connection.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
    while True:  # ends: each round but the last locks one more endpoint FOR UPDATE
        failing = _lock(session, moves)
        upgrades = [e for e in failing if not moves[e]]
        if not upgrades:
            return failing
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        moves.update(dict.fromkeys(upgrades, True))


_SAVEPOINT = "lock_endpoints"  # left to the transaction's end: releasing it is a round trip


def _lock(session: Session, moves: dict[int, bool]) -> set[int]:
    """Lock ``moves``' endpoints (FOR UPDATE where True) in id order; those failing."""
    connection = session.connection()
    failing: set[int] = set()
    # A statement per run of one lock mode: in the common case (plain successes alone),
    # one statement.
    for exclusive, run in groupby(sorted(moves), key=moves.__getitem__):
        for endpoint_id, failing_since in connection.execute(
                _LOCK_ENDPOINTS[exclusive], {"endpoint_ids": list(run)}):
            if failing_since is not None:
                failing.add(endpoint_id)
    return failing


def record_successes(session: Session,
                     done: Sequence[tuple[DeliveryJob, sender.SendResult]],
                     now: datetime, failing: Collection[int]) -> int:
    """Plain successes, in bulk (most deliveries): their attempts, and the notifications
    SENT, in two statements whatever their number; each endpoint of theirs that is
    ``failing`` (``lock_endpoints``, which the caller ran) recovers. Returns how many
    rows were still leased by us (the others' attempts are kept on record; their lease
    holder decides). Commits nothing."""
    if not done:
        return 0
    connection = session.connection()
    # Table-level: a plain executemany, none of the ORM's bulk machinery.
    connection.execute(_INSERT_ATTEMPTS, [attempt_row(job, result) for job, result in done])
    ids = [job.notification_id for job, _ in done]
    urls: dict[str, str | None] = dict(connection.execute(_MARK_SENT, {
        "ids": ids, "tokens": list({job.lease_token for job, _ in done}), "now": now}
    ).all())
    sent = set(urls)
    elsewhere = [{"nid": job.notification_id, "delivered_url": job.url} for job, _ in done
                 if job.notification_id in urls and urls[job.notification_id] != job.url]
    if elsewhere:
        connection.execute(_DELIVERED_AT, elsewhere)
    lost = Counter(ids) - Counter(sent)  # a job per POST: SENT counted one of each
    if lost:
        lost_jobs = []
        for job, _ in done:
            if lost[job.notification_id] > 0:
                lost[job.notification_id] -= 1
                lost_jobs.append(job)
        count_lost(session, lost_jobs)
    # A plain success on an endpoint that became failing meanwhile still releases it.
    by_endpoint: dict[int, list[DeliveryJob]] = {}
    for job, _ in done:
        if job.endpoint_id is not None and job.endpoint_id in failing:
            by_endpoint.setdefault(job.endpoint_id, []).append(job)
    for endpoint_id in sorted(by_endpoint):
        recover(session, endpoint_id, by_endpoint[endpoint_id], now)
    return len(sent)


def recover(session: Session, endpoint_id: int, jobs: Sequence[DeliveryJob],
            now: datetime) -> None:
    """Successes of ``jobs``, their rows SENT already, on the endpoint ``endpoint_id``,
    failing now (locked by ``lock_endpoints``; FOR KEY SHARE where it was healthy at
    every claim, which a move's FOR UPDATE waits for): it recovers
    (``endpoint_queue.on_recovery``), unless each came from a URL the endpoint has left
    since its claim. A 2xx there says nothing of the URL it moved to, which stays
    failing; if one of them was its head, the next held one takes its place: the new
    URL's probe, due now or when the pause the new URL asked for (Retry-After) ends,
    which a claim would otherwise hold it for. Without that, a head leaving the ladder
    so left the endpoint failing with no head, its queue held for good (a review found
    it in an earlier fix, reverted). Disabled, it waits for its enabling. Commits
    nothing."""
    if all(job.endpoint_url is not None for job in jobs):
        url_now, disabled_at, paused_until = session.execute(
            select(Endpoint.url, Endpoint.disabled_at, Endpoint.retry_after_until)
            .where(Endpoint.id == endpoint_id)
        ).one()
        if all(job.moved(url_now) for job in jobs):
            if disabled_at is None:
                endpoint_queue.promote_next(session, endpoint_id, now,
                                            due=max(now, paused_until or now))
            return
    endpoint_queue.on_recovery(session, endpoint_id, now)
