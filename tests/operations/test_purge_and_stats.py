"""Retention (function, beat entry, Celery task) and the stats functions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from celery.beat import Scheduler
from sqlalchemy import update

import beat_schedule
from deliverer import stopping
from deliverer.db import session_scope
from deliverer.models import Endpoint, MaintenanceRun, Notification, NotificationStatus, utcnow
from deliverer.operations import inspect, maintenance_run, stats
from deliverer.operations.purge import purge_attempts
from deliverer.operations.tasks import PURGE_EVERY
from deliverer.operations.tasks import purge_attempts as purge_task
from deliverer.partners import registered
from tests.operations.helpers import add_attempt, attempt_count
from tests.support import helpers as h
from tests.support.race import race
from tests.support.rows import failed


def test_purge_deletes_in_bounded_batches(settings):
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    now = utcnow()
    for i in range(7):
        add_attempt(nid, now - timedelta(days=100, minutes=i))
    add_attempt(nid, now - timedelta(days=1))
    progress: list[int] = []
    # Two batches of two at most: 4 of the 7 old ones go now, the rest on the next run.
    assert purge_attempts(timedelta(days=90), batch_size=2, max_batches=2,
                          progress=progress.append) == 4
    assert progress == [2, 2] and attempt_count() == 4
    assert purge_attempts(timedelta(days=90), batch_size=2) == 3
    assert attempt_count() == 1
    assert purge_attempts(timedelta(days=90)) == 0
    with pytest.raises(ValueError):
        purge_attempts(timedelta(days=-1))


def test_a_stopping_worker_leaves_the_rest_of_the_purge_to_the_next_run(settings):
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    for i in range(6):
        add_attempt(nid, utcnow() - timedelta(days=100, minutes=i))
    asked: list[int] = []

    def stop_after_two_batches() -> bool:  # the SIGTERM arrives during the second batch
        asked.append(len(asked))
        return len(asked) > 2

    assert purge_attempts(timedelta(days=90), batch_size=2,
                          stop=stop_after_two_batches) == 4
    assert attempt_count() == 2
    assert purge_attempts(timedelta(days=90), batch_size=2) == 2  # the next run
    assert attempt_count() == 0


def test_the_purge_task_asks_whether_the_worker_is_stopping(settings):
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    add_attempt(nid, utcnow() - timedelta(days=settings.attempt_retention_days + 1))
    stopping.begin()
    try:
        assert purge_task() == 0  # called in-process, as the worker's thread would
    finally:
        stopping.end()
    assert attempt_count() == 1
    assert purge_task() == 1


def test_beat_checks_the_purge_hourly_and_keeps_no_schedule_file(settings, celery_app):
    entry = beat_schedule.build(settings)["purge-old-attempts"]
    assert entry["task"] == "deliverer.purge_attempts"
    assert entry["schedule"] == timedelta(hours=1)
    assert celery_app.conf.beat_schedule["purge-old-attempts"]["task"] == purge_task.name
    assert celery_app.conf.beat_scheduler == "celery.beat:Scheduler"


def test_housekeeping_runs_as_beat_starts_then_every_interval(celery_app):
    """Beat keeps no state: each entry first ran one interval after its start, so a beat
    restarted more often than hourly never checked the purge, and the embedded broker
    was never pruned (an embedded-default try). All but the sweep are due at once."""
    beat = Scheduler(celery_app, lazy=False)  # the in-memory one beat runs
    due = {name for name, entry in beat.schedule.items() if entry.is_due().is_due}
    assert due == set(celery_app.conf.beat_schedule) - {"sweep-due-notifications"}
    assert "purge-old-attempts" in due
    # Once run, an entry waits its interval again.
    later = beat.schedule["purge-old-attempts"]._next_instance().is_due()
    assert not later.is_due and 3590 < later.next <= 3600


def test_the_purge_task_runs_once_a_day_however_often_it_is_triggered(settings):
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    old = utcnow() - timedelta(days=settings.attempt_retention_days + 1)
    add_attempt(nid, old)
    assert purge_task() == 1
    add_attempt(nid, old)
    assert purge_task() == 0  # completed less than a day ago: the next trigger waits
    assert attempt_count() == 1
    with session_scope() as session:  # a day later
        session.execute(update(MaintenanceRun).values(
            last_completed_at=utcnow() - PURGE_EVERY - timedelta(seconds=1)))
    assert purge_task() == 1
    assert attempt_count() == 0


def test_a_purge_claim_is_held_by_one_run_and_lapses_with_a_dead_worker(settings):
    t0 = utcnow()
    day, lease = timedelta(hours=23), timedelta(minutes=15)

    def claim(at: timedelta) -> bool:
        with session_scope() as session:
            return maintenance_run.claim_if_due(session, "job", now=t0 + at, every=day,
                                                lease=lease)

    def finish(at: timedelta, completed: bool) -> None:
        with session_scope() as session:
            maintenance_run.finish(session, "job", now=t0 + at, completed=completed)

    assert claim(timedelta(0))  # never run: due
    assert not claim(timedelta(minutes=1))  # held
    assert claim(timedelta(minutes=16))  # the holder died: its claim ran out
    finish(timedelta(minutes=20), completed=False)  # stopped early
    assert claim(timedelta(minutes=21))  # so the next trigger carries on
    finish(timedelta(minutes=30), completed=True)
    assert not claim(timedelta(hours=23, minutes=29))  # not due yet
    assert claim(timedelta(hours=23, minutes=30))


def test_racing_purge_triggers_let_exactly_one_run(settings):
    def claim() -> bool:
        with session_scope() as session:
            return maintenance_run.claim_if_due(session, "race", now=utcnow(),
                                                every=timedelta(hours=23),
                                                lease=timedelta(minutes=15))

    results = race([claim] * 8)
    assert sorted(results) == [False] * 7 + [True]


def test_the_purge_task_runs_on_the_worker(settings, worker, override_settings):
    shop = h.new_partner(settings, None)
    nid = failed(shop.partner_id, "http://127.0.0.1:9/hook")
    add_attempt(nid, utcnow() - timedelta(days=8))
    add_attempt(nid, utcnow() - timedelta(days=6))
    with override_settings(attempt_retention_days=7):
        purge_task.apply_async()  # routed to deliverer.maintenance, run by the worker
        h.wait_until(lambda: attempt_count() == 1, message="the purge task ran")


def test_stats_functions(settings):
    url = "http://127.0.0.1:9/hook"
    shop = h.new_partner(settings, url)
    now = utcnow()
    h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                          next_attempt_at=now - timedelta(seconds=90),
                          scheduled_for=now, enqueued_at=now)
    h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                          next_attempt_at=now - timedelta(seconds=10),
                          scheduled_for=now, enqueued_at=now)
    h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                          next_attempt_at=now + timedelta(hours=1))
    # In flight (leased): worked on, not waiting; its lease out: waiting again.
    in_flight = h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                      next_attempt_at=now - timedelta(seconds=300))
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == in_flight).values(
            lease_token="t", lease_expires_at=now + timedelta(seconds=30)))
    with session_scope() as session:
        assert stats.due_summary(session, now + timedelta(seconds=31)).count == 3
        due = stats.due_summary(session, now)
        assert due.count == 2
        assert due.lag_seconds == pytest.approx(90, abs=1)
        assert due.oldest_due_at is not None and due.oldest_due_at.tzinfo is not None
        assert stats.due_summary(session, now - timedelta(hours=1)).lag_seconds == 0.0
        counts = stats.status_counts(session)
        assert counts["PENDING"] == 4 and counts["SENT"] == 0
        assert stats.failing_endpoint_count(session) == 0
        collected = stats.collect(session, now=now)
        assert collected.due.count == 2 and collected.broker is None
        assert collected.as_dict()["due"]["count"] == 2


def _failing_endpoint(settings) -> tuple[Any, str]:
    """A partner and the public id of its registered endpoint failing now (counted)."""
    shop = h.new_partner(settings, "http://127.0.0.1:9/default")
    with session_scope() as session:
        broken = registered.create(session, settings, shop.partner_id,
                                   url="http://127.0.0.1:9/broken")
        broken.failing_since, broken.consecutive_failures = utcnow(), 13
        public_id = broken.public_id
    with session_scope() as session:
        assert stats.failing_endpoint_count(session) == 1
    return shop, public_id


def test_a_deleted_endpoint_is_no_longer_counted_or_listed_as_failing(settings):
    # It stayed failing for good: the console's list, deliverer stats and the
    # deliverer_failing_endpoints gauge (an alert on it never cleared; a black-box try).
    shop, public_id = _failing_endpoint(settings)
    with session_scope() as session:
        assert [e.endpoint.public_id for e in inspect.failing_endpoints(session)] == [public_id]
        registered.delete(session, registered.get(session, shop.partner_id, public_id))
    with session_scope() as session:
        assert stats.failing_endpoint_count(session) == 0
        assert inspect.failing_endpoints(session) == []
        # A failure recorded after the delete by a worker that had its POST in flight.
        session.execute(update(Endpoint).where(Endpoint.public_id == public_id)
                        .values(failing_since=utcnow()))
    with session_scope() as session:
        assert stats.failing_endpoint_count(session) == 0
        assert inspect.failing_endpoints(session) == []


def test_a_disabled_endpoint_is_counted_disabled_not_failing(settings):
    # "Failing endpoints: 2" beside "0 FAILING, 2 DISABLED" in deliverer stats, and the
    # gauge paging for endpoints no longer tried (the operator try).
    _, public_id = _failing_endpoint(settings)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.public_id == public_id)
                        .values(disabled_at=utcnow(), disabled_reason="410 Gone"))
    with session_scope() as session:
        assert stats.failing_endpoint_count(session) == 0
        assert stats.endpoint_statuses(session)["DISABLED"] == 1
        # The console still lists it, as disabled: the operator sees what it holds.
        [listed] = inspect.failing_endpoints(session)
        assert listed.endpoint.public_id == public_id


def test_a_moved_endpoint_is_not_blamed_for_its_old_urls_failures(settings):
    """After a move, deliverer stats printed the old URL's failures beside the new URL
    (67% for a URL that never failed), and the console showed the old URL's 410 and its
    hint beside it (a black-box try): a line per URL attempted, and a last error only
    for a failing endpoint."""
    old, new = "http://127.0.0.1:9/old", "http://127.0.0.1:9/new"
    shop = h.new_partner(settings, None)
    with session_scope() as session:
        endpoint = registered.create(session, settings, shop.partner_id, url=old)
        key, public_id = endpoint.id, endpoint.public_id
    nid = failed(shop.partner_id, old)  # its error: the old URL's HTTP 500
    now = utcnow()
    for minutes, success, url in ((3, False, old), (2, False, old), (1, True, new)):
        add_attempt(nid, now - timedelta(minutes=minutes), success=success, url=url)
    with session_scope() as session:
        registered.update_endpoint(session, settings, session.get(Endpoint, key), url=new)
    with session_scope() as session:
        rates = stats.endpoint_success_rates(session, now - timedelta(hours=1))
        [listed] = [e for e in inspect.failing_endpoints(session)
                    if e.endpoint.public_id == public_id]
    assert [(r.endpoint_id, r.url, r.attempts, r.successes) for r in rates] == [
        (public_id, old, 2, 0), (public_id, new, 1, 1)]
    assert listed.endpoint.url == new and listed.last_error is None
