"""Wake-ups (PostgreSQL): a publish wakes its endpoint only when no wake-up is pending,
and the woken task claims the endpoint's due first attempts a batch at a time."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

import deliverer
from deliverer.broker import dispatch
from deliverer.db import session_scope
from deliverer.delivery import wake
from deliverer.models import Endpoint, NotificationStatus, utcnow
from tests.support import helpers as h
from tests.support.messages import WAKE_UPS
from tests.support.receiver import ok

pytestmark = pytest.mark.skipif(not WAKE_UPS, reason="SQLite sends a message per notification")


def _wakes(published_tasks) -> list[int]:
    return [t["args"][0] for t in published_tasks if t["task"] == dispatch.DELIVER_DUE]


def _mark(endpoint_id: int, value) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoint_id)
                        .values(wake_sent_at=value))


def _mark_of(endpoint_id: int):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return session.scalar(select(Endpoint.wake_sent_at).where(Endpoint.id == endpoint_id))


def test_a_publish_sends_a_wake_up_only_when_none_is_pending(settings, receiver,
                                                             published_tasks):
    shop = h.new_partner(settings, receiver.url("/hook"))
    with session_scope() as session:  # its default endpoint, made with the partner
        endpoint_id = session.scalar(select(Endpoint.id).where(
            Endpoint.partner_id == shop.partner_id))
    # Pending: no wake-up message exists for the session's worker (if one runs) to take.
    _mark(endpoint_id, utcnow())
    for i in range(3):
        deliverer.publish_event(shop.partner_id, "t", f"r{i}", {})
    assert _wakes(published_tasks) == []

    _mark(endpoint_id, utcnow() - wake.WAKE_TTL - timedelta(seconds=1))  # taken as lost
    deliverer.publish_event(shop.partner_id, "t", "r3", {})
    assert _wakes(published_tasks) == [endpoint_id]


def test_the_woken_task_claims_a_batch_and_keeps_the_mark_while_some_remain(
        settings, receiver, override_settings):
    url = receiver.url("/hook")
    shop = h.new_partner(settings, url)
    now = utcnow()
    due = [h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                 next_attempt_at=now) for _ in range(5)]
    later = h.insert_notification(shop.partner_id, url, status=NotificationStatus.PENDING,
                                  next_attempt_at=now + timedelta(hours=1))
    retry = h.insert_notification(shop.partner_id, url, status=NotificationStatus.FAILED,
                                  next_attempt_at=now)
    endpoint_id = h.notification(due[0]).endpoint_id
    _mark(endpoint_id, now)
    taken: list[str] = []
    with override_settings(delivery_batch_size=2) as small:
        for expected_more in (True, True, False):
            wake.clear_marks([endpoint_id])
            with session_scope() as session:
                claim, more = wake.claim_due(session, endpoint_id, small)
            taken += [job.notification_id for job in claim.jobs]
            assert more is expected_more
            assert (_mark_of(endpoint_id) is not None) is expected_more
    assert sorted(taken) == sorted(due)
    assert h.notification(later).lease_token is None  # not due yet
    assert h.notification(retry).lease_token is None  # a retry: its own message


def test_no_publish_is_left_without_a_wake_up_by_a_concurrent_claim(settings, receiver,
                                                                    published_tasks,
                                                                    override_settings):
    """Publishes race with woken tasks taking batches of two; every wake-up sent is taken
    (here, by hand: the broker's message is not needed). If a publish ever found a mark
    that a claim was about to clear, its notification would stay PENDING."""
    receiver.always("/race", ok())
    url = receiver.url("/race")
    shop = h.new_partner(settings, url)
    published: list[str] = []
    done = threading.Event()

    def publish() -> None:
        try:
            for i in range(60):
                published.append(deliverer.publish_event(shop.partner_id, "t", f"r{i}",
                                                          {}).notification_id)
        finally:
            done.set()

    with override_settings(delivery_batch_size=2) as small:
        publisher = threading.Thread(target=publish)
        publisher.start()
        taken = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            wakes = _wakes(published_tasks)
            if taken < len(wakes):
                wake.deliver_due(wakes[taken], small)
                taken += 1
            elif done.is_set():
                break
            else:
                time.sleep(0.001)
        publisher.join(10)
    assert len(published) == 60
    h.wait_until(lambda: all(h.sent(nid) for nid in published), 10,
                 message="every notification delivered")
    assert len(receiver.requests("/race")) == 60
