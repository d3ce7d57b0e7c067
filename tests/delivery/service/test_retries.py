"""The retry cycle of a failing receiver: the whole ladder to the final failure, a
Retry-After honoured within the cycle, and the endpoint's health counting failures and
recovery."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.delivery import service
from deliverer.delivery.service import ClaimState
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.scheduling.sweep import collect_due
from tests.delivery.service.helpers import due_now
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.race import race


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
