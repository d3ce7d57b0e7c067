"""Publishing: the event, its notification and its sequence number in one transaction; the
broker message only after the commit."""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

import deliverer
from deliverer.broker import queues
from deliverer.db import session_scope
from deliverer.errors import PartnerNotFound, UnsafeUrl, ValidationFailed
from deliverer.models import (
    Endpoint,
    Event,
    Notification,
    NotificationStatus,
    Partner,
    PartnerFlow,
    WebhookSettings,
    utcnow,
)
from deliverer.publishing.api import publish_events
from deliverer.publishing.service import record_event as publish_event
from tests.support import helpers as h
from tests.support.messages import WAKE_UPS, delivery_messages, expected_message
from tests.support.race import race


def deliver_messages(published_tasks):
    return delivery_messages(published_tasks)


def test_publish_records_event_and_notification_and_enqueues(settings, receiver,
                                                              published_tasks):
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)
    published = deliverer.publish_event(partner.partner_id, "transaction.updated", "tx-1",
                                        {"amount": 1250, "currency": "EUR"})
    assert published.status == NotificationStatus.PENDING
    assert published.sequence == 1

    row = h.notification(published.notification_id)
    assert row.event_id == published.event_id
    assert row.url == url
    assert row.status == NotificationStatus.PENDING
    assert row.next_attempt_at is not None
    assert row.scheduled_for == row.next_attempt_at  # a message is on its way
    assert (row.retry_attempts, row.attempt_count) == (0, 0)

    body = json.loads(h.event_body_of(published.notification_id))
    assert body["id"] == published.event_id
    assert body["type"] == "transaction.updated"
    assert body["reference"] == "tx-1"
    assert body["data"] == {"amount": 1250, "currency": "EUR"}
    assert body["timestamp"].endswith("Z")

    [message] = deliver_messages(published_tasks)
    assert (message["task"], message["args"]) == expected_message(published.notification_id)
    assert message["queue"] == queues.FIRST
    assert message["eta"] is None


def test_callback_url_overrides_the_partner_url(settings, receiver, published_tasks):
    partner = h.new_partner(settings, receiver.url("/default"))
    other = receiver.url("/per-event")
    published = deliverer.publish_event(partner.partner_id, "t", "r", {}, callback_url=other)
    assert h.notification(published.notification_id).url == other
    # Its own endpoint, so its own sequence.
    assert published.sequence == 1
    assert deliverer.publish_event(partner.partner_id, "t", "r", {}).sequence == 1


@pytest.mark.parametrize("case", ["no_url", "disabled", "inactive", "polling"])
def test_not_sent_without_a_usable_url(settings, receiver, published_tasks, case):
    partner = h.new_partner(settings, None if case == "no_url" else receiver.url("/hook"))
    with session_scope() as session:
        if case == "disabled":
            session.execute(update(WebhookSettings).where(
                WebhookSettings.partner_id == partner.partner_id).values(enabled=False))
        if case in ("inactive", "polling"):
            session.execute(update(Partner).where(Partner.id == partner.partner_id).values(
                {"active": False} if case == "inactive" else {"flow": PartnerFlow.POLLING}))
    published = deliverer.publish_event(partner.partner_id, "t", "r", {"x": 1})
    assert published.status == NotificationStatus.NOT_SENT
    assert published.sequence is None
    row = h.notification(published.notification_id)
    assert row.status == NotificationStatus.NOT_SENT
    assert row.next_attempt_at is None
    # Each says why, with its own hint: a merchant that had turned webhooks off was told
    # to set a webhook URL (a black-box try).
    assert row.latest_error_payload["kind"] == {
        "no_url": "no_url", "disabled": "webhooks_disabled", "inactive": "not_a_webhook_partner",
        "polling": "not_a_webhook_partner"}[case]
    assert deliver_messages(published_tasks) == []


def test_unknown_partner(settings):
    with pytest.raises(PartnerNotFound):
        deliverer.publish_event("00000000-0000-0000-0000-000000000000", "t", "r", {})


@pytest.mark.parametrize("payload", [{"amount": float("nan")}, {"fee": float("inf")},
                                     {"at": object()}])
def test_a_payload_that_is_not_json_is_refused_and_nothing_written(settings, receiver,
                                                                    published_tasks, payload):
    """The API guard refuses NaN at the edge; Python producers reach the service directly."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    with pytest.raises(ValidationFailed, match="not JSON"):
        deliverer.publish_event(partner.partner_id, "t", "r", payload)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 0
    assert deliver_messages(published_tasks) == []


@pytest.mark.parametrize(("event_type", "reference", "says"), [
    ("t", "", "reference: must be a string of 1 to 200 characters"),
    ("t", "r" * 201, "reference: must be a string of 1 to 200 characters"),
    ("", "r", "type: must be a string of 1 to 100 characters"),
    ("t" * 101, "r", "type: must be a string of 1 to 100 characters"),
    ("t", None, "reference: must be a string"),
])
def test_an_empty_or_overlong_type_or_reference_is_refused(settings, receiver, published_tasks,
                                                           event_type, reference, says):
    """The API's schema refuses them at the edge; the Python API and the CLI said nothing
    of an empty one and failed with the database's DataError on a long one."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    with pytest.raises(ValidationFailed, match=re.escape(says)):
        deliverer.publish_event(partner.partner_id, event_type, reference, {})
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 0
    assert deliver_messages(published_tasks) == []


def test_private_callback_url_rejected_when_not_allowed(settings, receiver, published_tasks):
    partner = h.new_partner(settings, receiver.url("/hook"))
    strict = settings.with_overrides(allow_private_urls=False)
    with pytest.raises(UnsafeUrl), session_scope() as session:
        publish_event(session, strict, partner_id=partner.partner_id, type="t", reference="r",
                      payload={}, callback_url=receiver.url("/evil"))
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 0
    assert deliver_messages(published_tasks) == []


def test_sequences_per_endpoint_have_no_gaps(settings, receiver):
    a, b = receiver.url("/a"), receiver.url("/b")
    partner = h.new_partner(settings, a)
    seqs_a = [deliverer.publish_event(partner.partner_id, "t", f"r{i}", {}).sequence
              for i in range(5)]
    seqs_b = [deliverer.publish_event(partner.partner_id, "t", f"r{i}", {}, callback_url=b)
              .sequence for i in range(3)]
    assert seqs_a == [1, 2, 3, 4, 5]
    assert seqs_b == [1, 2, 3]
    # Another partner on the same URL is another endpoint.
    other = h.new_partner(settings, a, name="Other")
    assert deliverer.publish_event(other.partner_id, "t", "r", {}).sequence == 1
    assert h.endpoint_sequences(partner.partner_id, a) == (5, [1, 2, 3, 4, 5])


def test_concurrent_publishing_gives_gap_free_unique_sequences(settings, receiver):
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)
    threads_n, per_thread = 8, 12

    def publisher(n: int) -> list[int]:
        return [deliverer.publish_event(partner.partner_id, "t", f"r{n}-{i}", {}).sequence
                for i in range(per_thread)]

    got = [seq for seqs in race([lambda n=n: publisher(n) for n in range(threads_n)])
           for seq in seqs]
    total = threads_n * per_thread
    assert sorted(got) == list(range(1, total + 1))
    assert h.endpoint_sequences(partner.partner_id, url) == (total, list(range(1, total + 1)))


def test_concurrent_bulk_publishes_to_the_same_endpoints_do_not_deadlock(settings, receiver,
                                                                          caplog, worker):
    """Bulk publishes whose events name the same callback URLs in opposite orders: each
    reserves sequence numbers (locking the endpoint rows) in URL order, so they queue
    (and no deadlock victim needs running again).

    Between publishes only: the endpoints are created first and their wake-ups taken,
    then marked as having one pending, so that no wake-up's claim (which clears the marks
    of the endpoints it takes, in its plan's order, and is run again after a deadlock)
    locks them meanwhile."""
    partner = h.new_partner(settings, receiver.url("/default"))
    a, b = receiver.url("/a"), receiver.url("/b")
    setup = publish_events(partner.partner_id, [
        {"type": "t", "reference": f"setup-{url}", "payload": {}, "callback_url": url}
        for url in (a, b)])
    h.wait_until(lambda: all(h.sent(p.notification_id) for p in setup), timeout=30,
                 message="the setup webhooks sent")
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.partner_id == partner.partner_id)
                        .values(wake_sent_at=utcnow() + timedelta(hours=1)))
    caplog.set_level(logging.WARNING, logger="deliverer.db")
    rounds = 15
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def bulk(order: tuple[str, str]) -> None:
        for i in range(rounds):
            try:
                barrier.wait(10)
                publish_events(partner.partner_id, [
                    {"type": "t", "reference": f"r{i}", "payload": {}, "callback_url": url}
                    for url in order])
            except BaseException as exc:  # reported below
                errors.append(exc)

    race([lambda order=order: bulk(order) for order in ((a, b), (b, a))])
    assert not errors, errors
    assert not [r for r in caplog.records if "aborted" in r.getMessage()]
    for url in (a, b):
        assert h.endpoint_sequences(partner.partner_id, url) == (
            2 * rounds + 1, list(range(1, 2 * rounds + 2)))


def test_concurrent_first_publishes_to_a_new_endpoint(settings, receiver):
    """Racing to create the endpoint row itself: one endpoint, numbers 1..n."""
    partner = h.new_partner(settings, receiver.url("/hook"))
    fresh = receiver.url("/fresh")
    n = 8
    got = race([lambda i=i: deliverer.publish_event(partner.partner_id, "t", f"r{i}", {},
                                                    callback_url=fresh).sequence
                for i in range(n)])
    assert sorted(got) == list(range(1, n + 1))


class Boom(Exception):
    pass


def test_rolled_back_publish_leaves_no_gap_and_sends_nothing(settings, receiver,
                                                             published_tasks):
    url = receiver.url("/hook")
    partner = h.new_partner(settings, url)
    assert deliverer.publish_event(partner.partner_id, "t", "r1", {}).sequence == 1

    with pytest.raises(Boom), session_scope() as session:
        doomed = publish_event(session, settings, partner_id=partner.partner_id, type="t",
                               reference="r2", payload={})
        assert doomed.sequence == 2
        raise Boom  # the producer's transaction fails after publishing

    third = deliverer.publish_event(partner.partner_id, "t", "r3", {})
    assert third.sequence == 2
    assert h.endpoint_sequences(partner.partner_id, url) == (2, [1, 2])
    with session_scope() as session:
        assert session.get(Notification, doomed.notification_id) is None
        assert session.get(Event, doomed.event_id) is None
    # Only the two committed publishes produced broker messages: one each, or on
    # PostgreSQL wake-ups of the endpoint, the second one's only if a worker took the
    # first one's meanwhile.
    messages = [(m["task"], m["args"]) for m in deliver_messages(published_tasks)]
    if WAKE_UPS:
        assert 1 <= len(messages) <= 2
        assert set(map(str, messages)) == {str(expected_message(third.notification_id))}
    else:
        assert len(messages) == 2
        assert doomed.notification_id not in [args[0] for _task, args in messages]


def test_publish_inside_a_producer_transaction_enqueues_only_on_commit(settings, receiver,
                                                                       published_tasks):
    partner = h.new_partner(settings, receiver.url("/hook"))
    with session_scope() as session:
        published = publish_event(session, settings, partner_id=partner.partner_id, type="t",
                                  reference="r", payload={})
        session.flush()
        assert deliver_messages(published_tasks) == []  # not before the commit
    [message] = deliver_messages(published_tasks)
    assert (message["task"], message["args"]) == expected_message(published.notification_id,
                                                                  alone=False)



@pytest.mark.parametrize("bulk", [False, True])
def test_a_producers_publish_goes_to_deliverers_broker_whatever_app_is_current(
        settings, bulk):
    """A producer's program has no deliverer Celery app, or its own as current (the CLI
    had none): the messages went through that app, Celery's default amqp://localhost or
    the producer's broker, and were lost or left to the sweep's lost-message grace."""
    from celery import Celery, current_app
    from celery.signals import before_task_publish

    from deliverer.models import WakeGroup

    partner = h.new_partner(settings, "http://127.0.0.1:9/producer")
    with session_scope() as session:  # no wake-up pending: this publish sends one
        session.execute(update(Endpoint).values(wake_sent_at=None))
        session.execute(update(WakeGroup).values(wake_sent_at=None))
    sent_by: list[str] = []

    def seen(**_: object) -> None:
        sent_by.append(current_app.main)  # the app sending, in the sending thread

    producer = Celery("producer", broker="redis://127.0.0.1:9/0", set_as_current=False)
    previous = current_app._get_current_object()
    before_task_publish.connect(seen, weak=False)
    producer.set_current()
    try:
        if bulk:
            deliverer.publish_events(partner.partner_id, [
                {"type": "transaction.paid", "reference": f"B-{i}", "payload": {}}
                for i in range(3)])
        else:
            deliverer.publish_event(partner.partner_id, "transaction.paid", "P-1", {})
        assert current_app.main == "producer"  # the producer's again
    finally:
        previous.set_current()
        before_task_publish.disconnect(seen)
    assert sent_by and set(sent_by) == {"deliverer"}, sent_by


def test_a_publish_gives_the_threads_empty_app_slot_back_empty(settings):
    """A producer whose thread has no current app of its own (the default app serves
    it) keeps it so: a set_default() of its own, later, still reaches the thread."""
    from celery import Celery, _state

    partner = h.new_partner(settings, "http://127.0.0.1:9/producer")
    producer = Celery("producer", broker="redis://127.0.0.1:9/0", set_as_current=False)
    slot, default = _state._tls.current_app, _state.default_app
    _state._tls.current_app = None
    _state.set_default_app(producer)
    try:
        deliverer.publish_event(partner.partner_id, "transaction.paid", "S-1", {})
        assert _state._tls.current_app is None
    finally:
        _state._tls.current_app = slot
        _state.set_default_app(default)
