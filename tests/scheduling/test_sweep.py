"""The beat sweep: hands due rows to the broker, never beyond its horizon, never twice."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from deliverer.broker import queues
from deliverer.db import session_scope
from deliverer.models import Lane, NotificationStatus, utcnow
from deliverer.scheduling.sweep import collect_due
from deliverer.scheduling.tasks import sweep_due
from tests.support import helpers as h
from tests.support.race import race


@pytest.fixture
def partner(settings, receiver):
    return h.new_partner(settings, receiver.url("/hook"))


@pytest.fixture
def url(receiver):
    return receiver.url("/hook")


def delivery_messages(published_tasks) -> dict[str, dict]:
    """Notification id -> the message that carries it (single or batched delivery)."""
    found: dict[str, dict] = {}
    for task in published_tasks:
        if task["task"] == "deliverer.deliver":
            ids = [task["args"][0]]
        elif task["task"] == "deliverer.deliver_many":
            ids = list(task["args"][0])
        else:
            continue
        for nid in ids:
            assert nid not in found, f"{nid} was enqueued twice"
            found[nid] = task
    return found


def collect(settings, now=None, limit=None):
    with session_scope() as session:
        return collect_due(session, settings, now=now, limit=limit)


def test_collect_due_returns_exactly_the_rows_due_within_the_horizon(settings, partner, url):
    now = utcnow()
    horizon = timedelta(seconds=settings.sweep_horizon)
    grace = timedelta(seconds=settings.lost_message_grace)
    sec = timedelta(seconds=1)
    pid = partner.partner_id

    def row(due, status=NotificationStatus.PENDING, **kw):
        return h.insert_notification(pid, url, status=status, next_attempt_at=due, **kw)

    expected = {
        "overdue": row(now - 10 * sec),
        "due_now": row(now),
        "within_horizon": row(now + horizon - sec, status=NotificationStatus.FAILED,
                              lane=Lane.RETRY),
        "at_horizon": row(now + horizon),
        # A message was sent for an older due time; the row moved on since.
        "rescheduled": row(now + sec, scheduled_for=now - 30 * sec, enqueued_at=now - 30 * sec),
        # A message was sent long ago and never consumed: lost, send another.
        "lost": row(now - grace - 10 * sec, scheduled_for=now - grace - 10 * sec,
                    enqueued_at=now - grace - 10 * sec),
        # A lease that ran out (its worker died).
        "stale_lease": row(now - sec, lease_expires_at=now - sec),
    }
    skipped = {
        "beyond_horizon": row(now + horizon + sec),
        "in_an_hour": row(now + timedelta(hours=1)),
        "in_ten_days": row(now + timedelta(days=10)),
        "done": row(None, status=NotificationStatus.SENT),
        "exhausted": row(None, status=NotificationStatus.FAILED),
        "already_queued": row(now, scheduled_for=now, enqueued_at=now),
        "leased": row(now - sec, lease_expires_at=now + 30 * sec),
    }

    due = collect(settings, now=now)
    assert {d.notification_id for d in due} == set(expected.values())
    assert all(d.due_at <= now + horizon for d in due)
    assert [d.due_at for d in due] == sorted(d.due_at for d in due)
    lanes = {d.notification_id: d.lane for d in due}
    assert lanes[expected["within_horizon"]] == Lane.RETRY
    assert lanes[expected["due_now"]] == Lane.FIRST

    for nid in expected.values():
        row_ = h.notification(nid)
        assert row_.scheduled_for == row_.next_attempt_at
        assert row_.enqueued_at == now
    for name in ("beyond_horizon", "in_an_hour", "in_ten_days", "done", "exhausted"):
        row_ = h.notification(skipped[name])
        assert row_.scheduled_for is None, name
        assert row_.enqueued_at is None, name

    # An immediate second sweep finds nothing new.
    assert collect(settings, now=now) == []
    assert collect(settings, now=now + 0.1 * sec) == []

    # Later, the row that was just beyond the horizon comes into it; the far ones do not.
    later = collect(settings, now=now + 2 * sec)
    assert [d.notification_id for d in later] == [skipped["beyond_horizon"]]


def test_sweep_task_never_sends_an_eta_beyond_the_horizon(settings, partner, url,
                                                          published_tasks):
    now = utcnow()
    pid = partner.partner_id
    due_now = h.insert_notification(pid, url, status=NotificationStatus.PENDING,
                                    next_attempt_at=now)
    soon = h.insert_notification(pid, url, next_attempt_at=now + timedelta(seconds=3),
                                 status=NotificationStatus.FAILED, lane=Lane.RETRY)
    far = [h.insert_notification(pid, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=now + delta)
           for delta in (timedelta(seconds=settings.sweep_horizon + 5), timedelta(hours=8),
                         timedelta(days=29))]

    assert sweep_due() == 2
    sent = delivery_messages(published_tasks)
    assert sorted(sent) == sorted([due_now, soon])
    limit = utcnow() + timedelta(seconds=settings.sweep_horizon)
    for task in sent.values():
        if task["eta"] is not None:
            assert datetime.fromisoformat(task["eta"]) <= limit
    by_id = sent
    assert by_id[soon]["eta"] is not None
    assert datetime.fromisoformat(by_id[soon]["eta"]) == h.notification(soon).next_attempt_at
    assert by_id[soon]["queue"] == queues.RETRY
    assert by_id[due_now]["queue"] == queues.FIRST
    for nid in far:
        assert h.notification(nid).scheduled_for is None

    # Immediately again: nothing new is sent.
    published_tasks.clear()
    assert sweep_due() == 0
    assert published_tasks == []


def test_concurrent_sweeps_hand_out_each_row_once(settings, partner, url):
    """Two beats by mistake: each due row goes to exactly one of them."""
    now = utcnow()
    ids = {h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=now)
           for _ in range(40)}
    sweepers = 4
    results = race([lambda: [d.notification_id for d in collect(settings, now=now)]]
                   * sweepers)
    handed_out = [nid for batch in results for nid in batch]
    assert len(handed_out) == len(set(handed_out)), "a row was handed to two sweeps"
    assert set(handed_out) == ids


def test_batch_limit_takes_the_earliest_first(settings, partner, url):
    now = utcnow()
    ids = [h.insert_notification(partner.partner_id, url,
                                 status=NotificationStatus.PENDING,
                                 next_attempt_at=now - timedelta(seconds=10 - i))
           for i in range(10)]
    first = collect(settings, now=now, limit=4)
    assert [d.notification_id for d in first] == ids[:4]
    second = collect(settings, now=now, limit=4)
    assert [d.notification_id for d in second] == ids[4:8]
    rest = collect(settings, now=now)
    assert [d.notification_id for d in rest] == ids[8:]
