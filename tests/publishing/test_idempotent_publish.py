"""Publishing with an idempotency key, and the broker task that publishes with its task id.

The ``deliverer.publish_event`` message is the only copy of a producer's event until the
event's transaction commits: a database error must be retried, not acked away, and a
retry or redelivery after the commit must not record the event a second time (a second
notification, a second POST under another webhook-id).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

import deliverer
from deliverer.db import session_scope
from deliverer.errors import ValidationFailed
from deliverer.models import Endpoint, Event, Notification
from deliverer.publishing.api import publish_events
from deliverer.publishing.idempotency import IdempotencyKeyReused
from deliverer.publishing.own_transaction import publish_one as publish_one_and_commit
from deliverer.publishing.service import record_event as publish_event
from deliverer.publishing.service import record_events as service_publish_events
from deliverer.scheduling.tasks import sweep_due
from tests.support import helpers as h
from tests.support.db_faults import failing_inserts
from tests.support.messages import delivery_messages, enqueued_ids


def count(model) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model))


def deliver_messages(published_tasks):
    return delivery_messages(published_tasks)


def test_publishing_again_with_the_key_returns_the_recorded_event(settings, receiver,
                                                                  published_tasks):
    partner = h.new_partner(settings, receiver.url("/hook"))
    first = deliverer.publish_event(partner.partner_id, "t", "r", {"n": 1},
                                    idempotency_key="k-1")
    again = deliverer.publish_event(partner.partner_id, "t", "r", {"n": 1},
                                    idempotency_key="k-1")
    assert again.event_id == first.event_id
    assert again.notification_id == first.notification_id
    assert again.sequence == first.sequence == 1
    assert (count(Event), count(Notification)) == (1, 1)
    assert len(deliver_messages(published_tasks)) == 1
    assert h.endpoint_sequences(partner.partner_id, receiver.url("/hook")) == (1, [1])

    # Keys are the partner's own: another partner's "k-1" is another event.
    other = h.new_partner(settings, receiver.url("/other"), name="Other")
    theirs = deliverer.publish_event(other.partner_id, "t", "r", {"n": 1},
                                     idempotency_key="k-1")
    assert theirs.event_id != first.event_id
    # Unkeyed publishes are not deduplicated.
    assert deliverer.publish_event(partner.partner_id, "t", "r", {"n": 1}).sequence == 2


def test_publishing_by_url_again_answers_as_the_first_publish(settings, receiver,
                                                                published_tasks):
    """A publish by callback URL reports the URL's endpoint id, which its notifications
    reconcile by (it reported none: two black-box tries), and so does its repetition."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    spec = (partner.partner_id, "t", "r", {"n": 1}, receiver.url("/callback"))
    first = deliverer.publish_event(*spec, idempotency_key="k-1")
    again = deliverer.publish_event(*spec, idempotency_key="k-1")
    # All but the status, which a worker may have changed in between.
    assert [(d.notification_id, d.sequence, d.endpoint_id) for d in again.deliveries] == \
        [(d.notification_id, d.sequence, d.endpoint_id) for d in first.deliveries]
    with session_scope() as session:  # what the API shows as the notification's endpointId
        listed = session.scalar(select(Endpoint.public_id).join(
            Notification, Notification.endpoint_id == Endpoint.id).where(
            Notification.id == first.notification_id))
    assert [d.endpoint_id for d in first.deliveries] == [listed]
    assert listed is not None and listed.startswith("ep_")
    assert again.event_id == first.event_id


def test_a_key_used_for_another_event_is_refused(settings, receiver):
    partner = h.new_partner(settings, receiver.url("/hook"))
    deliverer.publish_event(partner.partner_id, "t", "r", {"n": 1}, idempotency_key="k")
    for changed in ({"type": "u"}, {"reference": "s"}, {"payload": {"n": 2}},
                    {"callback_url": receiver.url("/elsewhere")}):
        fields = {"type": "t", "reference": "r", "payload": {"n": 1}} | changed
        with pytest.raises(IdempotencyKeyReused):
            deliverer.publish_event(partner.partner_id, idempotency_key="k", **fields)
    assert (count(Event), count(Notification)) == (1, 1)


def race_an_open_publish(first, racer):
    """Run ``first(session)`` and keep its transaction open while ``racer()`` runs in a
    thread as far as it can (PostgreSQL: blocked on the first's rows; SQLite: on the write
    lock); then commit. Returns both results."""
    results: list = []

    def run() -> None:
        try:
            results.append(racer())
        except BaseException as exc:  # pragma: no cover - reported below
            results.append(exc)

    with session_scope() as session:
        mine = first(session)
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()
    thread.join(30)
    assert not thread.is_alive()
    [got] = results
    assert not isinstance(got, BaseException), got
    return mine, got


def test_concurrent_publishes_with_one_key_record_one_event(settings, receiver):
    """The second publish waits for the first to commit (the partner's publish lock, or
    the unique index's wait on its INSERT), then finds the first one's event."""
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)
    fields = {"partner_id": partner.partner_id, "type": "t", "reference": "r",
              "payload": {"n": 1}}
    first, got = race_an_open_publish(
        lambda session: publish_event(session, settings, idempotency_key="k", **fields),
        lambda: publish_one_and_commit(settings, idempotency_key="k", **fields))
    assert (got.event_id, got.notification_id) == (first.event_id, first.notification_id)
    assert (count(Event), count(Notification)) == (1, 1)
    assert h.endpoint_sequences(partner.partner_id, url) == (1, [1])


# --------------------------------------------------------------------------- bulk


def spec(reference: str, key: str | None = None, **changes) -> dict:
    return {"type": "t", "reference": reference, "payload": {"ref": reference},
            "idempotency_key": key} | changes


def test_a_bulk_publish_repeated_returns_the_recorded_events(settings, receiver,
                                                              published_tasks):
    """Before: the repeat's INSERT hit the unique index, and the whole batch failed with
    a raw IntegrityError."""
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)
    batch = [spec("a", "k-a"), spec("b", "k-b"), spec("c", "k-c")]
    first = publish_events(partner.partner_id, batch)
    assert [p.sequence for p in first] == [1, 2, 3]
    again = publish_events(partner.partner_id, batch)
    assert [(p.event_id, p.notification_id, p.sequence) for p in again] == [
        (p.event_id, p.notification_id, p.sequence) for p in first]
    assert (count(Event), count(Notification)) == (3, 3)
    assert sorted(enqueued_ids(published_tasks)) == sorted(p.notification_id for p in first)

    # Known keys, new keys and no key in one batch: in order, only the new ones written,
    # numbered on from the last without a gap.
    mixed = publish_events(partner.partner_id, [
        spec("b", "k-b"), spec("d", "k-d"), spec("e"), spec("a", "k-a")])
    assert (mixed[0].event_id, mixed[3].event_id) == (first[1].event_id, first[0].event_id)
    assert [mixed[1].sequence, mixed[2].sequence] == [4, 5]
    assert (count(Event), count(Notification)) == (5, 5)
    assert h.endpoint_sequences(partner.partner_id, url) == (5, [1, 2, 3, 4, 5])
    assert len(enqueued_ids(published_tasks)) == 5

    # A single keyed publish and a bulk one share the partner's keys.
    single = deliverer.publish_event(partner.partner_id, "t", "d", {"ref": "d"},
                                     idempotency_key="k-d")
    assert single.event_id == mixed[1].event_id
    [bulk] = publish_events(partner.partner_id, [spec("f", "k-f")])
    assert deliverer.publish_event(partner.partner_id, "t", "f", {"ref": "f"},
                                   idempotency_key="k-f").event_id == bulk.event_id
    assert (count(Event), count(Notification)) == (6, 6)


def test_a_bulk_publish_reusing_a_key_for_another_event_writes_nothing(settings, receiver,
                                                                       published_tasks):
    partner = h.new_partner(settings, receiver.url("/hook"))
    publish_events(partner.partner_id, [spec("a", "k-a")])
    before = len(enqueued_ids(published_tasks))
    with pytest.raises(IdempotencyKeyReused):
        publish_events(partner.partner_id, [spec("new", "k-new"),
                                            spec("a", "k-a", payload={"changed": True})])
    assert (count(Event), count(Notification)) == (1, 1)
    assert len(enqueued_ids(published_tasks)) == before
    # The refused batch gave its sequence number back.
    assert h.endpoint_sequences(partner.partner_id, receiver.url("/hook")) == (1, [1])


def test_a_key_twice_in_one_bulk_publish_is_refused(settings, receiver, published_tasks):
    """Before: the second row's INSERT hit the unique index (a raw IntegrityError)."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    for batch in ([spec("a", "k"), spec("a", "k")], [spec("a", "k"), spec("b", "k")]):
        with pytest.raises(ValidationFailed, match="repeated: \\['k'\\]"):
            publish_events(partner.partner_id, [spec("x", "other"), *batch])
    assert (count(Event), count(Notification)) == (0, 0)
    assert enqueued_ids(published_tasks) == []


def test_concurrent_bulk_publishes_sharing_a_key_record_its_event_once(settings, receiver):
    """As for one event: the racer's INSERT of the shared key fails once the first
    commits, and its second run returns that event and records only its own."""
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)
    [first], got = race_an_open_publish(
        lambda session: service_publish_events(session, settings,
                                               partner_id=partner.partner_id,
                                               events=[spec("shared", "k")]),
        lambda: publish_events(partner.partner_id, [spec("b", "k-b"), spec("shared", "k")]))
    assert got[1].event_id == first.event_id
    assert got[0].event_id != first.event_id
    assert (count(Event), count(Notification)) == (2, 2)
    assert h.endpoint_sequences(partner.partner_id, url) == (2, [1, 2])


# --------------------------------------------------------------------------- the task


def send_publish(celery_app, partner_id: str, task_id: str, reference: str = "inv-1") -> None:
    celery_app.send_task("deliverer.publish_event", task_id=task_id, kwargs={
        "partner_id": partner_id, "type": "invoice.paid", "reference": reference,
        "payload": {"total": 99}})


def test_task_redelivered_after_its_commit_publishes_once(settings, celery_app, worker,
                                                          receiver):
    """A worker killed between commit and ack: the broker delivers the same message (the
    same task id) again."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    task_id = str(uuid.uuid4())
    with h.task_runs(task_id) as runs:
        send_publish(celery_app, partner.partner_id, task_id)
        h.wait_until(lambda: len(runs) == 1, message="first run")
        send_publish(celery_app, partner.partner_id, task_id)
        h.wait_until(lambda: len(runs) == 2, message="second run")
    assert runs == ["SUCCESS", "SUCCESS"]
    [got] = receiver.wait_for(1, "/hook")
    h.wait_until(lambda: h.sent(got.headers["webhook-id"]), message="SENT")
    assert (count(Event), count(Notification)) == (1, 1)
    assert len(receiver.requests("/hook")) == 1


def test_task_retries_a_database_error(settings, celery_app, worker, receiver):
    """Before: the task failed, was acked, and the event was gone for good."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    task_id = str(uuid.uuid4())
    with failing_inserts("events", partner.partner_id) as injected, h.task_runs(task_id) as runs:
        send_publish(celery_app, partner.partner_id, task_id)
        [got] = receiver.wait_for(1, "/hook")
        h.wait_until(lambda: len(runs) == 2, message="both runs")  # in either order
    assert injected == [1]
    assert sorted(runs) == ["RETRY", "SUCCESS"]
    envelope = h.verify_signature(partner.signing_secret, got)
    assert (envelope["type"], envelope["reference"]) == ("invoice.paid", "inv-1")
    assert (count(Event), count(Notification)) == (1, 1)


def test_task_retried_after_an_unknown_commit_publishes_once(settings, celery_app, worker,
                                                             receiver):
    """The commit went through but the worker heard of an error: the retry (same task
    id) finds the event instead of recording a second one. The commit's after-commit
    enqueue never ran, so the sweep sends the notification once it is overdue."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    task_id = str(uuid.uuid4())
    with failing_inserts("events", partner.partner_id, after_commit=True) as injected, \
            h.task_runs(task_id) as runs:
        send_publish(celery_app, partner.partner_id, task_id)
        # Two runs; in either order: the retry can run on another worker thread, and end,
        # before the first run's own end is signalled.
        h.wait_until(lambda: len(runs) == 2, message="the retry's run")
    assert injected == [1]
    assert sorted(runs) == ["RETRY", "SUCCESS"]
    assert (count(Event), count(Notification)) == (1, 1)
    # No message went out for it: the sweep's lost-message grace recovers it.
    h.wait_until(lambda: receiver.requests("/hook"), on_poll=sweep_due, interval=0.2,
                 message="the sweep's delivery")
    [got] = receiver.requests("/hook")
    h.wait_until(lambda: h.sent(got.headers["webhook-id"]), message="SENT")
    assert len(receiver.requests("/hook")) == 1


def test_task_takes_the_producers_idempotency_key(settings, celery_app, worker, receiver):
    partner = h.new_partner(settings, receiver.url("/hook"))
    kwargs = {"partner_id": partner.partner_id, "type": "t", "reference": "r",
              "payload": {}, "idempotency_key": "order-7"}
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    with h.task_runs(ids[0]) as first, h.task_runs(ids[1]) as second:
        for task_id in ids:
            celery_app.send_task("deliverer.publish_event", task_id=task_id, kwargs=kwargs)
        h.wait_until(lambda: first and second, message="both runs")
    assert first + second == ["SUCCESS", "SUCCESS"]
    receiver.wait_for(1, "/hook")
    with session_scope() as session:
        assert session.scalars(select(Event.idempotency_key)).all() == ["order-7"]
