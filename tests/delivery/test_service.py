"""Delivering one notification (claim, send, record) against the real database and a real
receiver, without the broker: the service is called directly, as a worker would."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.delivery import claim as claim_module
from deliverer.delivery import service
from deliverer.delivery.sending import slow_lane
from deliverer.delivery.service import ClaimState
from deliverer.delivery.troubleshooting import FailureKind, hint_for
from deliverer.errors import Conflict
from deliverer.models import (
    Endpoint,
    Lane,
    Notification,
    NotificationStatus,
    Trigger,
    WebhookSettings,
    utcnow,
)
from deliverer.notifications.ignore import ignore
from deliverer.scheduling.sweep import collect_due
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.ports import closed_port
from tests.support.race import race


@pytest.fixture
def partner(settings, receiver):
    return h.new_partner(settings, receiver.url("/hook"))


def due_now(partner, url, **kwargs):
    return h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=utcnow(), **kwargs)


def test_successful_delivery(settings, receiver, partner):
    url = receiver.url("/hook")
    nid = due_now(partner, url)
    before = time.monotonic()
    outcome = service.deliver(nid, settings)
    wall_ms = (time.monotonic() - before) * 1000

    assert outcome.state == ClaimState.CLAIMED
    assert outcome.status == NotificationStatus.SENT
    assert outcome.next_attempt is None
    row = h.notification(nid)
    assert row.status == NotificationStatus.SENT
    assert row.sent_at is not None
    assert row.next_attempt_at is None
    assert row.scheduled_for is None
    assert row.lease_token is None and row.lease_expires_at is None
    assert (row.attempt_count, row.retry_attempts) == (1, 0)
    assert row.latest_error_payload is None

    [attempt] = h.attempts(nid)
    assert attempt.success is True
    assert attempt.response_status == 200
    assert attempt.response_body == "ok"
    assert attempt.error_payload is None
    assert attempt.trigger == Trigger.AUTOMATIC
    assert attempt.url == url
    assert attempt.duration_ms <= wall_ms  # the POST's own time, within the delivery's

    [got] = receiver.requests("/hook")
    assert got.headers["webhook-id"] == nid
    assert got.body == h.event_body_of(nid)
    envelope = h.verify_signature(partner.signing_secret, got)
    assert set(envelope) == {"id", "type", "reference", "timestamp", "data"}
    assert envelope["data"] == {"amount": 42}


FAILURES = {
    "500": (rx.status(500), "http_status", 500),
    "404": (rx.status(404), "http_status", 404),
    "401": (rx.status(401), "http_status", 401),
    "redirect": (rx.redirect("https://example.invalid/hook", 302), "redirect", 302),
    "timeout": (rx.sleep(3.0), "timeout", None),
    "reset": (rx.reset(), "connection_reset", None),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_failed_attempt_is_recorded_with_its_error_payload(settings, receiver, partner, name):
    behaviour, kind, status = FAILURES[name]
    url = receiver.always(f"/{name}", behaviour)
    nid = due_now(partner, url)
    quick = settings.with_overrides(total_timeout=0.5)
    before = utcnow()
    outcome = service.deliver(nid, quick)
    after = utcnow()

    assert outcome.status == NotificationStatus.FAILED
    row = h.notification(nid)
    [attempt] = h.attempts(nid)
    assert attempt.success is False
    assert attempt.response_status == status
    assert attempt.error_payload["kind"] == kind
    assert attempt.error_payload["httpStatus"] == status
    assert attempt.error_payload["hint"] == hint_for(FailureKind(kind), status)
    assert attempt.error_payload["message"]
    assert row.latest_error_payload == attempt.error_payload
    assert row.status == NotificationStatus.FAILED
    assert (row.retry_attempts, row.attempt_count) == (1, 1)
    assert row.lane == Lane.RETRY
    # First rung of the ladder: 2 minutes, scaled.
    step = timedelta(seconds=120 * settings.time_scale)
    assert before + step <= row.next_attempt_at <= after + step
    # Due within the sweep horizon: the caller is told to enqueue it, and the row says so.
    assert outcome.next_attempt is not None
    assert outcome.next_attempt.due_at == row.next_attempt_at
    assert outcome.next_attempt.lane == Lane.RETRY
    assert row.scheduled_for == row.next_attempt_at


@pytest.mark.parametrize("code", [200, 500])
def test_a_receivers_answer_is_recorded_whatever_its_bytes(settings, receiver, partner, code):
    """A NUL in the body made PostgreSQL refuse the attempt row: nothing was recorded,
    and the webhook was POSTed again at every lease expiry (a black-box try)."""
    url = receiver.always("/nul", rx.status(code, b"ok\x00nul \xff\xfe end"))
    nid = due_now(partner, url)
    outcome = service.deliver(nid, settings)
    assert outcome.status == (NotificationStatus.SENT if code == 200
                              else NotificationStatus.FAILED)
    [attempt] = h.attempts(nid)
    assert attempt.response_status == code
    assert attempt.response_body == "ok\ufffdnul \ufffd\ufffd end"


def test_what_a_receiver_echoes_into_the_message_is_bounded(settings, receiver, partner):
    location = "http://example.com/" + "L" * 60_000
    url = receiver.always("/far", rx.status(302, headers={"Location": location}))
    nid = due_now(partner, url)
    service.deliver(nid, settings)
    [attempt] = h.attempts(nid)
    message = attempt.error_payload["message"]
    assert message.startswith("HTTP 302 redirect to 'http://example.com/LLL")
    assert len(message) < 600 and message.endswith("(redirects are not followed)")


@pytest.mark.parametrize("target, kind", [
    ("refused", "connection_refused"),
    ("dns", "dns"),
    ("tls", "tls"),
    ("blocked", "blocked_address"),
])
def test_network_failures_are_recorded(settings, receiver, partner, target, kind):
    urls = {
        "refused": f"http://127.0.0.1:{closed_port()}/hook",
        "dns": f"http://{h.UNRESOLVABLE}/hook",
        "tls": receiver.url("/hook", scheme="https"),
        "blocked": receiver.url("/hook"),
    }
    run_settings = settings.with_overrides(allow_private_urls=(target != "blocked"))
    nid = due_now(partner, urls[target])
    with h.unresolvable_host():
        service.deliver(nid, run_settings)
    [attempt] = h.attempts(nid)
    assert attempt.error_payload["kind"] == kind
    assert attempt.error_payload["httpStatus"] is None
    assert attempt.response_status is None
    assert h.notification(nid).latest_error_payload == attempt.error_payload
    assert receiver.requests() == []


def test_whole_cycle_of_an_always_failing_receiver(settings, receiver, partner):
    """The real default ladder at full scale, time injected: 30 days of attempts, each one a
    real POST and a real attempt row, ending FAILED with nothing scheduled."""
    url = receiver.always("/down", rx.status(500))
    full = settings.with_overrides(time_scale=1.0)
    ladder = full.ladder
    t0 = utcnow()
    nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                next_attempt_at=t0, cycle_started_at=t0)

    now = t0
    failures = 0
    while True:
        with session_scope() as session:
            claim = service.claim(session, nid, full, now=now)
        assert claim.state == ClaimState.CLAIMED, claim
        result = service.perform(claim.job, full)
        with session_scope() as session:
            outcome = service.record(session, claim.job, result, full, now=now)
        failures += 1
        assert outcome.status == NotificationStatus.FAILED
        if outcome.due_at is None:
            break
        assert outcome.due_at - now == timedelta(seconds=ladder.delay(failures))
        # Beyond the sweep horizon: left to the sweep, not enqueued by the worker.
        assert outcome.next_attempt is None
        if failures <= len(ladder.steps) + 1:
            # Not claimable a moment before it is due.
            with session_scope() as session:
                early = service.claim(session, nid, full,
                                      now=outcome.due_at - timedelta(seconds=1))
            assert early.state == ClaimState.NOT_DUE
            assert early.due_at == outcome.due_at
        now = outcome.due_at

    assert now <= t0 + timedelta(days=30) < now + timedelta(seconds=ladder.repeat)
    # The first attempt, one per ladder step, then one every 8 hours up to day 30.
    expected = 1 + len(ladder.steps) + int((30 * 86400 - sum(ladder.steps)) // ladder.repeat)
    assert failures == expected

    row = h.notification(nid)
    assert row.status == NotificationStatus.FAILED
    assert row.next_attempt_at is None
    assert row.scheduled_for is None
    assert row.retry_attempts == row.attempt_count == failures

    rows = h.attempts(nid)
    assert len(rows) == failures
    assert all(not a.success and a.error_payload["kind"] == "http_status" for a in rows)
    got = receiver.requests("/down")
    assert len(got) == failures
    assert {r.headers["webhook-id"] for r in got} == {nid}
    assert {r.body for r in got} == {h.event_body_of(nid)}
    for r in got[:3] + got[-3:]:
        h.verify_signature(partner.signing_secret, r)

    # Exhausted: nothing to claim, nothing for the sweep.
    with session_scope() as session:
        assert service.claim(session, nid, full, now=now + timedelta(days=1)).state == \
            ClaimState.FINAL
        assert collect_due(session, full, now=now + timedelta(days=1)) == []


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


def test_retry_after_is_honoured_within_the_cycle(settings, receiver, partner):
    url = receiver.always("/busy", rx.retry_after("600", 429))
    nid = due_now(partner, url)
    before = utcnow()
    service.deliver(nid, settings)
    row = h.notification(nid)
    # The ladder says 120 s; the receiver asked for 600 s (both scaled).
    wait = (row.next_attempt_at - before).total_seconds()
    assert 600 * settings.time_scale <= wait < 600 * settings.time_scale + 0.5
    assert h.attempts(nid)[0].error_payload["httpStatus"] == 429

    # A Retry-After beyond the 30-day cycle is capped at its end.
    url = receiver.always("/gone-for-long", rx.retry_after(str(10**9), 503))
    nid = due_now(partner, url)
    service.deliver(nid, settings)
    row = h.notification(nid)
    cap = row.cycle_started_at + timedelta(seconds=settings.ladder.max_age * settings.time_scale)
    assert row.next_attempt_at == cap


def test_an_absurd_retry_after_is_recorded_at_full_time_scale(settings, receiver, partner):
    """Unscaled, 999999999999 s is past the year 9999: the attempt must still be written."""
    real_time = settings.with_overrides(time_scale=1.0)
    url = receiver.always("/never", rx.retry_after("999999999999", 503))
    nid = due_now(partner, url)
    outcome = service.deliver(nid, real_time)
    assert outcome.status == "FAILED"
    row = h.notification(nid)
    assert row.lease_token is None
    assert row.next_attempt_at == row.cycle_started_at + timedelta(
        seconds=real_time.ladder.max_age)
    assert [a.response_status for a in h.attempts(nid)] == [503]


def test_endpoint_health_tracks_failures_and_recovery(settings, receiver, partner):
    url = receiver.program("/flaky", [rx.status(500), rx.status(503)], rx.ok())
    first = due_now(partner, url)
    second = due_now(partner, url)
    service.deliver(first, settings)
    service.deliver(second, settings)
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.url == url))
        assert endpoint.consecutive_failures == 2
        assert endpoint.failing_since is not None
        assert endpoint.last_failure_at >= endpoint.failing_since
    third = due_now(partner, url)
    assert service.deliver(third, settings).status == NotificationStatus.SENT
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.url == url))
        assert endpoint.consecutive_failures == 0
        assert endpoint.failing_since is None
        assert endpoint.last_success_at is not None


def test_concurrent_failures_are_all_counted(settings, receiver, partner):
    url = receiver.always("/down", rx.sleep(0.2, rx.status(500)))
    nids = [due_now(partner, url) for _ in range(6)]
    race([lambda nid=nid: service.deliver(nid, settings) for nid in nids])
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.url == url))
        assert endpoint.consecutive_failures == len(nids)


def test_rotated_secret_signs_with_both_until_it_expires(settings, receiver, partner):
    old_secret = partner.signing_secret
    from deliverer.delivery.sending.signing import generate_secret

    new_secret = generate_secret()
    with session_scope() as session:
        session.execute(update(WebhookSettings).where(
            WebhookSettings.partner_id == partner.partner_id).values(
            signing_secret=new_secret, previous_secret=old_secret,
            previous_secret_expires_at=utcnow() + timedelta(hours=1)))
    url = receiver.url("/hook")
    service.deliver(due_now(partner, url), settings)
    [got] = receiver.requests("/hook")
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    h.verify_signature(new_secret, got)
    h.verify_signature(old_secret, got)

    with session_scope() as session:
        session.execute(update(WebhookSettings).where(
            WebhookSettings.partner_id == partner.partner_id).values(
            previous_secret_expires_at=utcnow() - timedelta(seconds=1)))
    service.deliver(due_now(partner, url), settings)
    latest = receiver.requests("/hook")[-1]
    assert len(latest.headers["webhook-signature"].split(" ")) == 1
    h.verify_signature(new_secret, latest)


def test_stored_response_body_is_capped(settings, receiver, partner):
    url = receiver.always("/huge", rx.huge(2 * 1024 * 1024, 500))
    nid = due_now(partner, url)
    service.deliver(nid, settings)
    [attempt] = h.attempts(nid)
    assert len(attempt.response_body) == settings.max_response_bytes
    assert attempt.error_payload["httpStatus"] == 500


def test_manual_lane_records_manual_trigger(settings, receiver, partner):
    nid = due_now(partner, receiver.url("/hook"), lane=Lane.MANUAL)
    service.deliver(nid, settings)
    assert h.attempts(nid)[0].trigger == Trigger.MANUAL


def test_attempt_payloads_are_json_round_tripped(settings, receiver, partner):
    url = receiver.always("/err", rx.status(500, "ünïcödé ✓".encode()))
    nid = due_now(partner, url)
    service.deliver(nid, settings)
    with session_scope() as session:
        stored = session.scalar(select(Notification.latest_error_payload)
                                .where(Notification.id == nid))
    assert json.loads(json.dumps(stored)) == stored
    assert h.attempts(nid)[0].response_body == "ünïcödé ✓"


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
