"""The whole pipeline with a real Celery worker: publish -> broker -> worker -> receiver.

The retry ladder runs on a 0.001 time scale (2 minutes are 120 ms). Nothing sleeps for
ladder time: tests poll for the outcome with a bounded wait, running the beat's sweep task
(``deliverer.scheduling.tasks.sweep_due``) for real on every poll, as beat would.
"""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

import pytest

import deliverer
from deliverer.broker.dispatch import enqueue_delivery
from deliverer.celery_app import make_celery
from deliverer.delivery.troubleshooting import FailureKind, hint_for
from deliverer.models import NotificationStatus, utcnow
from deliverer.retry_ladder import Ladder
from deliverer.scheduling.tasks import sweep_due
from tests.support import helpers as h
from tests.support import receiver as rx
from tests.support.celery_app import current_celery_app

pytestmark = pytest.mark.usefixtures("worker")

# A bogus broker: nothing listens on port 1 of loopback.
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"


def sweep() -> None:
    sweep_due()


def settle(seconds: float = 0.3) -> None:
    """A short pause to catch anything that should NOT happen (a duplicate POST)."""
    time.sleep(seconds)


def test_published_event_is_delivered_once_and_signed(settings, receiver):
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)
    published = deliverer.publish_event(partner.partner_id, "transaction.updated", "tx-42",
                                        {"amount": 1000, "currency": "EUR"})
    h.wait_until(lambda: h.sent(published.notification_id), message="SENT")
    settle()

    [got] = receiver.requests("/hook")
    assert got.headers["webhook-id"] == published.notification_id
    envelope = h.verify_signature(partner.signing_secret, got)
    assert envelope["id"] == published.event_id
    assert envelope["reference"] == "tx-42"
    assert envelope["data"] == {"amount": 1000, "currency": "EUR"}

    row = h.notification(published.notification_id)
    assert (row.attempt_count, row.retry_attempts) == (1, 0)
    assert row.next_attempt_at is None and row.scheduled_for is None
    [attempt] = h.attempts(published.notification_id)
    assert attempt.success and attempt.response_status == 200


def test_failing_receiver_is_retried_on_the_ladder_until_it_succeeds(settings, receiver):
    url = receiver.fail_then_succeed("/flaky", 3, 500)
    partner = h.new_partner(settings, url)
    published = deliverer.publish_event(partner.partner_id, "transaction.updated", "tx-1",
                                        {"amount": 1})
    nid = published.notification_id
    h.wait_until(lambda: h.sent(nid), on_poll=sweep, message="SENT after three failures")
    settle()

    row = h.notification(nid)
    assert row.status == NotificationStatus.SENT
    assert row.retry_attempts == 3
    assert row.attempt_count == 4
    assert row.next_attempt_at is None
    assert row.latest_error_payload["httpStatus"] == 500  # the last failure stays on record

    rows = h.attempts(nid)
    assert [a.success for a in rows] == [False, False, False, True]
    for attempt in rows[:3]:
        assert attempt.response_status == 500
        assert attempt.error_payload == {
            "kind": "http_status",
            "message": "HTTP 500 Internal Server Error",
            "httpStatus": 500,
            "hint": hint_for(FailureKind.HTTP_STATUS, 500),
        }
    assert rows[3].error_payload is None and rows[3].response_status == 200

    got = receiver.requests("/flaky")
    assert len(got) == 4
    assert {r.headers["webhook-id"] for r in got} == {nid}  # same id on every attempt
    assert len({r.body for r in got}) == 1  # the exact same bytes every time
    for r in got:
        h.verify_signature(partner.signing_secret, r)
    # Each retry waited at least its rung of the ladder: 2m, 5m, 10m (scaled).
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    for gap, rung in zip(gaps, settings.ladder.steps[:3], strict=True):
        assert gap >= rung * settings.time_scale - 0.01, (gaps, rung)


def test_always_failing_receiver_exhausts_the_cycle(settings, receiver, override_settings):
    # 100 s, 200 s, 300 s, then every 400 s, for 2000 s; scaled by 0.001.
    ladder = Ladder(steps=(100.0, 200.0, 300.0), repeat=400.0, max_age=2000.0)
    url = receiver.always("/dead", rx.status(503))
    with override_settings(ladder=ladder) as short:
        partner = h.new_partner(short, url)
        published = deliverer.publish_event(partner.partner_id, "t", "r", {"n": 1})
        nid = published.notification_id
        row = h.wait_until(
            lambda: (r := h.notification(nid)).next_attempt_at is None
            and r.status == NotificationStatus.FAILED and r,
            on_poll=sweep, message="exhausted (FAILED, nothing scheduled)")
        settle(0.5)

    row = h.notification(nid)
    assert row.status == NotificationStatus.FAILED
    assert row.next_attempt_at is None and row.scheduled_for is None
    got = receiver.requests("/dead")
    rows = h.attempts(nid)
    # Every attempt is recorded, and counted, once.
    assert len(rows) == len(got) == row.attempt_count == row.retry_attempts
    # With zero latency: attempts at 0, .1, .3, .6, 1.0, 1.4, 1.8 s (2.2 s > 2 s cap).
    assert 3 <= len(rows) <= 7, len(rows)
    assert all(not a.success and a.error_payload["kind"] == "http_status"
               and a.error_payload["httpStatus"] == 503 for a in rows)
    # Retries are scheduled no later than the cycle's end; one may start a little after
    # it, by the scheduling lateness (bounded at 1 s, see BENCHMARKS.rst), never later.
    deadline = row.cycle_started_at + timedelta(seconds=ladder.max_age * short.time_scale)
    assert all(a.started_at <= deadline + timedelta(seconds=1) for a in rows), (
        [a.started_at - row.cycle_started_at for a in rows])
    assert {r.headers["webhook-id"] for r in got} == {nid}


def test_duplicate_messages_cause_one_post(settings, receiver):
    """At-least-once delivery: the same message several times, on a 4-thread worker."""
    url = receiver.always("/slow", rx.sleep(0.3))
    partner = h.new_partner(settings, url)
    published = deliverer.publish_event(partner.partner_id, "t", "r", {})
    nid = published.notification_id
    for _ in range(5):
        assert enqueue_delivery(nid, "first")
    h.wait_until(lambda: h.sent(nid), message="SENT")
    settle(0.5)
    assert len(receiver.requests("/slow")) == 1
    assert len(h.attempts(nid)) == 1
    assert h.notification(nid).attempt_count == 1


def test_broker_down_at_publish_then_the_sweep_delivers(settings, celery_app, receiver):
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)

    down = make_celery(settings.with_overrides(broker_url=UNREACHABLE_BROKER))
    try:
        with current_celery_app(down):
            start = time.monotonic()
            published = deliverer.publish_event(partner.partner_id, "t", "r", {"x": 1})
            elapsed = time.monotonic() - start
    finally:
        celery_app.set_current()
        celery_app.set_default()

    assert elapsed < 3.0, f"publish took {elapsed:.1f}s with the broker down"
    nid = published.notification_id
    row = h.notification(nid)
    assert row.status == NotificationStatus.PENDING  # committed despite the broker
    assert row.next_attempt_at is not None
    assert row.scheduled_for is None  # no message: left to the sweep
    settle()
    assert receiver.requests() == []

    # The broker is back: the beat's sweep enqueues it and the worker delivers it.
    assert sweep_due() == 1
    h.wait_until(lambda: h.sent(nid), message="SENT after the sweep")
    [got] = receiver.requests("/hook")
    assert got.headers["webhook-id"] == nid
    assert len(h.attempts(nid)) == 1


def test_lost_message_is_resent_after_the_grace(settings, receiver, override_settings):
    """A row that says a message is queued, but none is (Redis lost it): the sweep leaves
    it alone for ``lost_message_grace``, then sends another."""
    url = receiver.url("/hook")
    with override_settings(lost_message_grace=1.0) as s:
        partner = h.new_partner(s, url)
        now = utcnow()
        nid = h.insert_notification(partner.partner_id, url, status=NotificationStatus.PENDING,
                                    next_attempt_at=now,
                                    scheduled_for=now, enqueued_at=now)
        start = time.monotonic()
        h.wait_until(lambda: h.sent(nid), on_poll=sweep, message="SENT after the grace")
    [got] = receiver.requests("/hook")
    assert got.at - start >= 0.9  # not before the grace (minus clock slack)
    assert got.headers["webhook-id"] == nid


def test_many_events_each_delivered_exactly_once_in_sequence(settings, receiver):
    partners = [h.new_partner(settings, receiver.url(f"/p{i}"), name=f"P{i}") for i in range(3)]
    published = []
    for n in range(10):
        for partner in partners:
            published.append(deliverer.publish_event(partner.partner_id, "t", f"r{n}", {"n": n}))
    ids = {p.notification_id for p in published}
    h.wait_until(lambda: all(h.sent(nid) for nid in ids), timeout=30, on_poll=sweep,
                 message="all SENT")
    settle()
    got = receiver.requests()
    assert len(got) == len(ids)
    assert {r.headers["webhook-id"] for r in got} == ids
    for i, partner in enumerate(partners):
        last, seqs = h.endpoint_sequences(partner.partner_id, receiver.url(f"/p{i}"))
        assert (last, seqs) == (10, list(range(1, 11)))
        for r in receiver.requests(f"/p{i}"):
            h.verify_signature(partner.signing_secret, r)


def test_publishing_over_the_broker(settings, celery_app, receiver):
    """Producers in other services: ``send_task("deliverer.publish_event", ...)``."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    celery_app.send_task("deliverer.publish_event", kwargs={
        "partner_id": partner.partner_id, "type": "invoice.paid", "reference": "inv-9",
        "payload": {"total": 99}})
    [got] = receiver.wait_for(1, "/hook")
    envelope = h.verify_signature(partner.signing_secret, got)
    assert (envelope["type"], envelope["reference"], envelope["data"]) == (
        "invoice.paid", "inv-9", {"total": 99})
    nid = got.headers["webhook-id"]
    h.wait_until(lambda: h.sent(nid), message="SENT")
    assert h.notification(nid).sequence == 1
