"""The queue repair, the net under the queues: it releases held notifications that nothing
else would, leaves partners with webhooks off alone, and the beat runs it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from deliverer.db import session_scope
from deliverer.delivery import endpoint_queue
from deliverer.models import Endpoint, Lane, NotificationStatus, utcnow
from tests.delivery.endpoint_queue.helpers import endpoint_at, hold, run_drain, save_settings
from tests.support.helpers import insert_notification, new_partner, notification


def _repair() -> int:
    with session_scope() as session:
        return endpoint_queue.repair(session, utcnow())


def test_repair_releases_queues_that_nothing_else_would(settings, receiver):
    """The net under the queues: a healthy endpoint that holds notifications but is not
    draining is set draining; a failing one with no head and nothing pending gets its
    next held notification promoted. Queues that are moving are left alone."""
    partner = new_partner(settings, receiver.url("/x"))
    healthy_url, failing_url = receiver.url("/healthy"), receiver.url("/failing")
    probed_url, off_url = receiver.url("/probed"), receiver.url("/disabled")
    stuck = insert_notification(partner.partner_id, healthy_url, status=NotificationStatus.PENDING,
                                next_attempt_at=None)
    first, second = (insert_notification(partner.partner_id, failing_url,
                                         status=NotificationStatus.PENDING, next_attempt_at=None)
                     for _ in range(2))
    head = insert_notification(partner.partner_id, probed_url, lane=Lane.FIRST,
                               status=NotificationStatus.FAILED,
                               next_attempt_at=utcnow() + timedelta(hours=1))
    behind = insert_notification(partner.partner_id, probed_url, status=NotificationStatus.PENDING,
                                 next_attempt_at=None)
    gone = insert_notification(partner.partner_id, off_url, status=NotificationStatus.PENDING,
                               next_attempt_at=None)
    hold(stuck, first, second, behind, gone)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.url.in_([failing_url, probed_url]))
                        .values(failing_since=utcnow()))
        session.execute(update(Endpoint).where(Endpoint.url == off_url)
                        .values(disabled_at=utcnow(), disabled_reason="410"))

    assert _repair() == 2  # the healthy one and the failing one without a head
    assert endpoint_at(partner.partner_id, healthy_url).draining
    promoted = notification(first)
    assert not promoted.held and promoted.next_attempt_at is not None
    assert notification(second).held  # one probe at a time
    assert notification(behind).held and notification(head).next_attempt_at is not None
    assert notification(gone).held  # waits for the merchant to save the settings
    assert _repair() == 0  # now moving: a head climbs, a drain runs
    assert run_drain(settings) == 1 and not notification(stuck).held


def test_repair_promotes_a_head_on_a_failing_endpoint_left_draining(settings, receiver):
    """Failing and draining with no head: the drain waits for the endpoint to be healthy,
    which only a head's success would make it, and the repair skipped draining endpoints
    (a review: a change since reverted reached this state). The next held one probes."""
    partner = new_partner(settings, receiver.url("/x"))
    url = receiver.url("/failing-draining")
    first, second = (insert_notification(partner.partner_id, url,
                                         status=NotificationStatus.PENDING, next_attempt_at=None)
                     for _ in range(2))
    hold(first, second)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.url == url)
                        .values(failing_since=utcnow(), draining=True))
    assert _repair() == 1
    promoted = notification(first)
    assert not promoted.held and promoted.next_attempt_at is not None
    assert notification(second).held
    assert _repair() == 0  # a head climbs


def test_repair_leaves_partners_with_webhooks_off_alone(settings, receiver):
    url = receiver.url("/paused-repair")
    partner = new_partner(settings, url)
    nid = insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                              next_attempt_at=None)
    hold(nid)
    save_settings(partner.partner_id, settings, enabled=False)
    assert _repair() == 0
    assert not endpoint_at(partner.partner_id, url).draining


def test_the_beat_runs_the_repair(settings):
    import beat_schedule

    entry = beat_schedule.build(settings)["repair-held-queues"]
    assert entry["task"] == "deliverer.repair_queues"
    assert entry["schedule"].total_seconds() == pytest.approx(settings.sweep_interval * 12)
