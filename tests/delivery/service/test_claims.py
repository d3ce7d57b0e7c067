"""Who may send a notification: one POST when two workers race for it, an expired lease
taken over (the late worker changes nothing), a voided lease freed by its own holder only,
nothing sent when it is not due, final or missing, and a row another request holds locked
told apart from a busy one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.delivery import claim as claim_module
from deliverer.delivery import service
from deliverer.delivery.sending import slow_lane
from deliverer.delivery.service import ClaimState
from deliverer.errors import Conflict
from deliverer.models import Lane, Notification, NotificationStatus, utcnow
from deliverer.notifications.ignore import ignore
from tests.delivery.service.helpers import due_now
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.race import race


def test_two_workers_racing_send_one_post(settings, receiver, partner):
    url = receiver.always("/slow", rx.sleep(0.5))
    nid = due_now(partner, url)
    racers = 6
    outcomes = race([lambda: service.deliver(nid, settings)] * racers)
    assert len(outcomes) == racers
    states = sorted(o.state for o in outcomes)
    assert states.count(ClaimState.CLAIMED) == 1, states
    assert all(s in (ClaimState.CLAIMED, ClaimState.BUSY, ClaimState.LOCKED, ClaimState.FINAL)
               for s in states)
    assert len(receiver.requests("/slow")) == 1
    assert len(h.attempts(nid)) == 1
    assert h.notification(nid).status == NotificationStatus.SENT


def test_expired_lease_is_taken_over_and_the_late_worker_changes_nothing(
        settings, receiver, partner):
    url = receiver.url("/hook")
    t0 = utcnow()
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=t0)
    with session_scope() as session:
        first = service.claim(session, nid, settings, now=t0)
    assert first.state == ClaimState.CLAIMED
    with session_scope() as session:
        assert service.claim(session, nid, settings, now=t0).state == ClaimState.BUSY
    # The first worker stalls past its lease; a second worker takes over.
    later = t0 + timedelta(seconds=settings.lease_seconds + 1)
    with session_scope() as session:
        second = service.claim(session, nid, settings, now=later)
    assert second.state == ClaimState.CLAIMED
    assert second.job.lease_token != first.job.lease_token

    late_result = service.perform(first.job, settings)
    with session_scope() as session:
        late = service.record(session, first.job, late_result, settings, now=later)
    assert late.state == ClaimState.BUSY
    row = h.notification(nid)
    assert row.lease_token == second.job.lease_token
    assert row.status == NotificationStatus.PENDING
    assert row.attempt_count == 1  # its POST was made: counted, as it is on record

    with session_scope() as session:
        done = service.record(session, second.job, service.perform(second.job, settings),
                              settings, now=later)
    assert done.status == NotificationStatus.SENT
    row = h.notification(nid)
    assert (row.status, row.attempt_count, row.lease_token) == (NotificationStatus.SENT, 2, None)
    assert len(h.attempts(nid)) == 2  # both POSTs happened and both are on record


@pytest.mark.parametrize("answer", [200, 500])
def test_a_post_in_flight_when_its_notification_is_ignored_is_counted(
        settings, receiver, partner, answer):
    """The attempt is on record and in ``attemptCount``; the ignore's NOT_SENT stands.
    Ignore waits while the lease is held (409): this POST outlived it."""
    url = receiver.always("/ignored", rx.status(answer))
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=utcnow())
    with session_scope() as session:
        claimed = service.claim(session, nid, settings)
    assert claimed.state == ClaimState.CLAIMED
    with session_scope() as session, pytest.raises(Conflict, match="being sent right now"):
        ignore(session, h.principal(partner), nid)
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == nid)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with session_scope() as session:
        ignore(session, h.principal(partner), nid)
    with session_scope() as session:
        outcome = service.record(session, claimed.job, service.perform(claimed.job, settings),
                                 settings)
    assert outcome.state == ClaimState.BUSY
    row = h.notification(nid)
    assert (row.status, row.attempt_count) == (NotificationStatus.NOT_SENT, 1)
    assert len(h.attempts(nid)) == 1


def test_nothing_is_sent_when_not_due_final_or_missing(settings, receiver, partner):
    url = receiver.url("/hook")
    future = h.insert_notification(partner.partner_id, url,
                                   status=NotificationStatus.PENDING,
                                   next_attempt_at=utcnow() + timedelta(minutes=5))
    outcome = service.deliver(future, settings)
    assert outcome.state == ClaimState.NOT_DUE
    assert outcome.due_at == h.notification(future).next_attempt_at

    done = due_now(partner, url)
    assert service.deliver(done, settings).status == NotificationStatus.SENT
    assert service.deliver(done, settings).state == ClaimState.FINAL

    assert service.deliver("00000000-0000-0000-0000-000000000000", settings).state == \
        ClaimState.MISSING
    assert len(receiver.requests()) == 1


def test_a_row_a_request_holds_locked_is_locked_not_busy(settings, partner):
    """A merchant's retry request holds the row (FOR KEY SHARE) while a worker claims:
    the claim skips it and says LOCKED, so the task comes back instead of dropping it."""
    if settings.is_sqlite:
        pytest.skip("SQLite has no row locks: a writer waits for the other one to finish")
    nid = due_now(partner, "http://127.0.0.1:9/hook")
    with session_scope() as request:
        request.execute(select(Notification.id).where(Notification.id == nid)
                        .with_for_update(key_share=True))
        with session_scope() as session:
            assert service.claim(session, nid, settings).state == ClaimState.LOCKED
    with session_scope() as session:
        assert service.claim(session, nid, settings).state == ClaimState.CLAIMED


def test_a_row_released_between_the_two_looks_is_locked_not_busy(
        settings, partner, monkeypatch):
    """The lease skipped the row (locked), and the lock was gone by the second look: the
    row is due and free, so the message must come back (LOCKED), not be dropped (BUSY)."""
    nid = due_now(partner, "http://127.0.0.1:9/hook")
    monkeypatch.setattr(claim_module, "lease_jobs", lambda *args, **kwargs: ([], []))
    with session_scope() as session:
        assert service.claim(session, nid, settings).state == ClaimState.LOCKED
    row = h.notification(nid)
    assert row.lease_token is None and row.status == NotificationStatus.PENDING


def test_the_claim_looks_rows_up_by_key_whatever_the_statistics_say(settings, partner):
    """Statistics taken over a backlog of future retries (every ``next_attempt_at`` ahead,
    every status FAILED) made PostgreSQL claim one row through ``ix_notifications_due``,
    reading every due row: 100-460 ms per claim in the isolation benchmark. The claim
    must go by primary key, whatever the statistics say."""
    if settings.is_sqlite:
        pytest.skip("PostgreSQL's planner; SQLite has no such statistics")
    from sqlalchemy import event, text

    from deliverer.db import get_database

    url = "http://127.0.0.1:9/hook"
    ahead = [h.insert_notification(partner.partner_id, url, lane=Lane.FIRST,
                                   status=NotificationStatus.FAILED,
                                   next_attempt_at=utcnow() + timedelta(days=1 + i))
             for i in range(40)]
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id.in_(ahead))
                        .values(retry_attempts=1))
        session.execute(text("ANALYZE notifications"))
    due = [due_now(partner, url) for _ in range(30)]

    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("WITH pick") or "SET lease_token" in statement:
            statements.append((statement, parameters))

    engine = get_database().engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope() as session:
            assert service.claim(session, due[-1], settings).state == ClaimState.CLAIMED
    finally:
        event.remove(engine, "before_cursor_execute", capture)
        with session_scope() as session:  # leave no skewed statistics to later tests
            session.execute(text("DELETE FROM pg_statistic WHERE starelid = "
                                 "'notifications'::regclass"))
    [(statement, parameters)] = statements
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()
    # (A table this small may be scanned whole; what matters is that the due index,
    # which the skewed statistics favour, is not how the row is found.)
    assert "ix_notifications_due" not in plan, plan


def _void(nid: str, expires=None) -> None:
    """What a fresh cycle does to a lease held meanwhile (``cycle.fresh_cycle_values``):
    its token cleared, its time kept (or, ``expires``, another holder's time)."""
    with session_scope() as session:
        values = {"lease_token": None}
        if expires is not None:
            values["lease_expires_at"] = expires
        session.execute(update(Notification).where(Notification.id == nid).values(**values))


def test_a_voided_lease_is_freed_by_its_own_holder_only(settings, receiver, partner):
    url = receiver.always("/ok", rx.ok())
    nid = due_now(partner, url)
    with session_scope() as session:
        job = service.claim(session, nid, settings).job
    assert job is not None and job.lease_expires_at is not None
    result = service.perform(job, settings)
    # Ours overran: another worker took the row, and a fresh cycle voided its lease.
    theirs = job.lease_expires_at + timedelta(seconds=30)
    _void(nid, expires=theirs)
    with session_scope() as session:
        assert service.record(session, job, result, settings).state == ClaimState.BUSY
    row = h.notification(nid)
    assert row.lease_expires_at == theirs  # still held for their POST, still out
    assert row.attempt_count == 1
    # Theirs, voided, is freed by its own record.
    _void(nid, expires=job.lease_expires_at)
    with session_scope() as session:
        service.record(session, job, result, settings)
    assert h.notification(nid).lease_expires_at is None


def test_a_voided_lease_handed_back_unsent_is_freed(settings, receiver, partner):
    """Deferred by the slow lane after a fresh cycle voided its lease: it stayed held
    until the lease ran out, and the merchant's retry waited minutes."""
    url = receiver.always("/ok", rx.ok())
    nid = due_now(partner, url)
    with session_scope() as session:
        job = service.claim(session, nid, settings).job
    assert job is not None
    _void(nid)
    with session_scope() as session:
        slow_lane.defer(session, [nid], job.lease_token, settings,
                        lease_expires_at=job.lease_expires_at)
    assert h.notification(nid).lease_expires_at is None
