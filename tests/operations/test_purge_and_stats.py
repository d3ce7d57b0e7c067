"""Retention (function, beat entry, Celery task) and the stats functions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.schedules import crontab

import beat_schedule
from deliverer import stopping
from deliverer.db import session_scope
from deliverer.models import NotificationStatus, utcnow
from deliverer.operations import stats
from deliverer.operations.purge import purge_attempts
from deliverer.operations.tasks import purge_attempts as purge_task
from tests.operations.helpers import add_attempt, attempt_count
from tests.support import helpers as h
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


def test_beat_runs_the_purge_daily(settings, celery_app):
    entry = beat_schedule.build(settings)["purge-old-attempts"]
    assert entry["task"] == "deliverer.purge_attempts"
    assert isinstance(entry["schedule"], crontab)
    assert entry["schedule"].hour == {3} and entry["schedule"].minute == {17}
    assert celery_app.conf.beat_schedule["purge-old-attempts"]["task"] == purge_task.name


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
    with session_scope() as session:
        due = stats.due_summary(session, now)
        assert due.count == 2
        assert due.lag_seconds == pytest.approx(90, abs=1)
        assert due.oldest_due_at is not None and due.oldest_due_at.tzinfo is not None
        assert stats.due_summary(session, now - timedelta(hours=1)).lag_seconds == 0.0
        counts = stats.status_counts(session)
        assert counts["PENDING"] == 3 and counts["SENT"] == 0
        assert stats.failing_endpoint_count(session) == 0
        collected = stats.collect(session, now=now)
        assert collected.due.count == 2 and collected.broker is None
        assert collected.as_dict()["due"]["count"] == 2
