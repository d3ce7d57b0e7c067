"""A single publish on PostgreSQL is one statement (``publishing/one_statement.py``),
which decides as ``record_events`` does: each case is published both ways, to two
partners set up alike, and what they wrote compared."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import JSON, cast, func, literal, select, update
from sqlalchemy.exc import DataError

from deliverer import prepared
from deliverer.db import get_database, in_transaction, session_scope
from deliverer.delivery.wakeups.wake_groups import group_of
from deliverer.errors import PartnerNotFound, UnsafeUrl, ValidationFailed
from deliverer.models import (
    Endpoint,
    Event,
    Notification,
    Partner,
    PartnerFlow,
    WebhookSettings,
    subscribed,
    utcnow,
)
from deliverer.models.endpoint import subscribed_in_sql
from deliverer.partners import registered
from deliverer.publishing import one_statement, own_transaction, service
from deliverer.publishing.idempotency import IdempotencyKeyReused
from deliverer.publishing.one_statement import publish_alone
from deliverer.publishing.own_transaction import PUBLISH_RETRY_FOR
from deliverer.publishing.service import record_events
from tests.support import helpers as h
from tests.support.messages import WAKE_UPS
from tests.support.race import race

pytestmark = pytest.mark.skipif(not WAKE_UPS, reason="PostgreSQL only: SQLite has one path")

DEFAULT = "http://127.0.0.1:9/default"
BILLING = "http://127.0.0.1:9/billing"
ORDERS = "http://127.0.0.1:9/orders"
SPARE = "http://127.0.0.1:9/spare"
CALLBACK = "http://127.0.0.1:9/callback"


@pytest.mark.parametrize("event_types", [
    None, "null", [], ["*"], ["transaction.*"], ["transaction.paid"], ["transaction."],
    ["transaction"], [".*"], ["*.paid"], ["invoice.*", "transaction.paid"], ["trans*"]])
def test_subscriptions_match_in_sql_as_in_python(event_types):
    from deliverer.db import get_database

    if event_types == "null":
        column: Any = cast(literal("null"), JSON)
        python = None
    else:
        column = cast(literal(json.dumps(event_types)), JSON) if event_types is not None \
            else cast(literal(None), JSON)
        python = event_types
    with get_database().engine.connect() as connection:
        for event_type in ("transaction.paid", "transaction", "transactionx.paid",
                           "invoice.settled", ""):
            in_sql = connection.scalar(select(subscribed_in_sql(column, literal(event_type))))
            assert in_sql is subscribed(python, event_type), (event_types, event_type)


def _add(settings, partner_id: str, url: str, event_types: list[str] | None = None,
         disabled: str | None = None, reason: str | None = None) -> None:
    with session_scope() as session:
        endpoint = registered.create(session, settings, partner_id, url=url,
                                     event_types=event_types)
        if disabled:
            endpoint.disabled_at = utcnow()
            endpoint.disabled_reason = reason


def _fan_out(settings, partner_id: str) -> None:
    _add(settings, partner_id, BILLING, ["invoice.*"])
    _add(settings, partner_id, ORDERS, ["transaction.*"], disabled=True, reason="410 Gone")
    _add(settings, partner_id, SPARE, None, disabled=True)


def _unsubscribed(settings, partner_id: str) -> None:
    _add(settings, partner_id, BILLING, ["invoice.*"])


def _webhooks(**values: Any) -> Callable[[Any, str], None]:
    def set_up(settings, partner_id: str) -> None:
        with session_scope() as session:
            table = WebhookSettings if "enabled" in values else Partner
            key = WebhookSettings.partner_id if "enabled" in values else Partner.id
            session.execute(update(table).where(key == partner_id).values(**values))
    return set_up


# name: (the partner's webhook URL, its set-up, the event's callback URL)
CASES: dict[str, tuple[str | None, Callable[[Any, str], None] | None, str | None]] = {
    "default endpoint": (DEFAULT, None, None),
    "fan-out, disabled endpoints": (DEFAULT, _fan_out, None),
    "no endpoint subscribed": (None, _unsubscribed, None),
    "no URL": (None, None, None),
    "webhooks turned off": (DEFAULT, _webhooks(enabled=False), None),
    "partner inactive": (DEFAULT, _webhooks(active=False), None),
    "partner polling": (DEFAULT, _webhooks(flow=PartnerFlow.POLLING), None),
    "polling, with a callback URL": (DEFAULT, _webhooks(flow=PartnerFlow.POLLING), CALLBACK),
    "callback URL, new endpoint": (DEFAULT, None, CALLBACK),
    "callback URL of a registered endpoint": (DEFAULT, _fan_out, BILLING),
}


def _written(partner_id: str, published) -> dict[str, Any]:
    """What a publish wrote, without what differs between partners (ids, times)."""
    with session_scope() as session:
        event = session.get(Event, published.event_id)
        rows = session.execute(
            select(Notification, Endpoint.url, Endpoint.wake_sent_at.is_not(None))
            .outerjoin(Endpoint, Endpoint.id == Notification.endpoint_id)
            .where(Notification.event_id == published.event_id)).all()
        public_ids = dict(session.execute(select(Endpoint.public_id, Endpoint.url).where(
            Endpoint.partner_id == partner_id)).all())
    body = json.loads(event.body)
    assert (body["id"], event.partner_id) == (event.id, partner_id)
    notifications = sorted((
        {"url": n.url, "endpoint": url, "woken": woken, "status": n.status,
         "sequence": n.sequence, "error": n.latest_error_payload, "lane": n.lane,
         "held": n.held, "counts": (n.retry_attempts, n.manual_retry_count, n.attempt_count),
         "due": n.next_attempt_at is not None, "scheduled": n.scheduled_for is not None,
         "enqueued": n.enqueued_at is not None, "sent_at": n.sent_at, "lease": n.lease_token,
         "times": {n.cycle_started_at, n.created_at, n.updated_at}
         == {event.created_at}}
        for n, url, woken in rows), key=lambda n: str(n["url"]))
    return {
        "event": (event.type, event.reference, event.payload, event.callback_url,
                  event.idempotency_key, {k: v for k, v in body.items() if k != "id"}
                  | {"timestamp": None}),
        "notifications": notifications,
        "published": (published.status, published.sequence,
                      [(d.status, d.sequence, public_ids.get(d.endpoint_id))
                       for d in published.deliveries]),
        "first": published.notification_id == published.deliveries[0].notification_id,
    }


def _url_of(endpoint_id: int) -> str:
    with session_scope() as session:
        return session.scalar(select(Endpoint.url).where(Endpoint.id == endpoint_id))


def _spec(callback_url: str | None, key: str | None = None) -> dict[str, Any]:
    return {"type": "transaction.paid", "reference": "TXN-1",
            "payload": {"amount": "12.50", "nested": {"b": [1, 2], "a": None}},
            "callback_url": callback_url, "idempotency_key": key}


def _alone(settings, partner_id: str, spec: dict[str, Any]):
    return publish_alone(settings, partner_id, spec, retry_for=PUBLISH_RETRY_FOR,
                         only_if=None)


def _in_transaction(settings, partner_id: str, spec: dict[str, Any]):
    return in_transaction(lambda session: record_events(
        session, settings, partner_id=partner_id, events=[spec]))[0]


@pytest.fixture
def wake_ups(monkeypatch) -> list[tuple[int, list[str]]]:
    """The wake-ups publishes send, kept from the broker (a worker the session started
    would deliver, and change what is compared): a group's, as its endpoints'."""
    sent: list[tuple[int, list[str]]] = []

    def enqueue_wake(endpoint_id: int, notification_ids: Sequence[str] = ()) -> bool:
        sent.append((endpoint_id, list(notification_ids)))
        return True

    def enqueue_group_wake(group_id: int, endpoint_ids: Sequence[int] = (),
                           notification_ids: Sequence[str] = ()) -> bool:
        # Taken as the wake-ups of the endpoints it is sent for (one notification each):
        # what record_events sends them.
        assert all(group_of(e) == group_id for e in endpoint_ids)
        sent.extend((e, [n]) for e, n in zip(endpoint_ids, notification_ids, strict=True))
        return True

    for module in (service, one_statement):
        monkeypatch.setattr(module, "enqueue_wake", enqueue_wake)
    monkeypatch.setattr(one_statement, "enqueue_group_wake", enqueue_group_wake)
    return sent


@pytest.mark.parametrize("case", list(CASES))
def test_one_statement_writes_what_record_events_writes(settings, wake_ups, case):
    url, set_up, callback_url = CASES[case]
    written = []
    for name, publish in (("alone", _alone), ("record_events", _in_transaction)):
        partner = h.new_partner(settings, url, name=name)
        if set_up is not None:
            set_up(settings, partner.partner_id)
        woken = []
        for key in ("first", "second"):  # the second: sequences and wake-up marks taken
            wake_ups.clear()
            published = publish(settings, partner.partner_id, _spec(callback_url, key))
            assert published is not None, f"{case}: left to record_events"
            woken.append(sorted((_url_of(endpoint_id), len(ids))
                                for endpoint_id, ids in wake_ups))
        written.append(_written(partner.partner_id, published) | {"woken": woken})
    assert written[0] == written[1]
    if written[0]["published"][0] == "PENDING":
        assert written[0]["woken"][0] and not written[0]["woken"][1]


def test_a_webhook_url_without_its_endpoint_row_is_left_to_record_events(settings):
    partner = h.new_partner(settings, DEFAULT)
    with session_scope() as session:  # as written by hand, or before endpoints existed
        session.execute(update(Endpoint).where(Endpoint.partner_id == partner.partner_id)
                        .values(registered=False, is_default=False))
    assert _alone(settings, partner.partner_id, _spec(None)) is None
    with session_scope() as session:
        assert session.scalar(select(Event.id)) is None  # nothing written
    published = _in_transaction(settings, partner.partner_id, _spec(None))
    assert (published.status, published.sequence) == ("PENDING", 1)


def test_a_recorded_key_is_left_to_record_events(settings):
    partner = h.new_partner(settings, DEFAULT)
    first = _alone(settings, partner.partner_id, _spec(None, "k-1"))
    assert first is not None
    assert _alone(settings, partner.partner_id, _spec(None, "k-1")) is None
    with session_scope() as session:  # nothing written, no number reserved
        assert session.scalar(select(func.count()).select_from(Notification)) == 1
        assert session.scalar(select(Endpoint.last_sequence)
                              .where(Endpoint.partner_id == partner.partner_id)) == 1
    again = _in_transaction(settings, partner.partner_id, _spec(None, "k-1"))
    assert again == first
    other = _spec(None, "k-1") | {"reference": "TXN-2"}
    assert _alone(settings, partner.partner_id, other) is None
    with pytest.raises(IdempotencyKeyReused):
        _in_transaction(settings, partner.partner_id, other)


@pytest.mark.parametrize("spec", [
    {"payload": {"amount": float("nan")}}, {"callback_url": "ftp://127.0.0.1/hook"},
    {"type": "x" * 101}, {"reference": "x" * 201}, {"reference": ""},
    {"endpoint": "ep_0123"}])
def test_what_record_events_refuses_or_targets_by_id_is_left_to_it(settings, spec):
    partner = h.new_partner(settings, DEFAULT)
    assert _alone(settings, partner.partner_id, _spec(None) | spec) is None
    if "endpoint" not in spec:
        with pytest.raises((ValidationFailed, UnsafeUrl)):
            _in_transaction(settings, partner.partner_id, _spec(None) | spec)


def test_an_over_long_key_is_refused_not_cut(settings):
    """As the INSERT of ``record_events`` refuses it: an explicit cast to VARCHAR(n)
    would cut it silently (and two keys alike in their first 255 characters collide).
    (A type or reference too long is refused before: ``envelope.new_event``.)"""
    partner = h.new_partner(settings, DEFAULT)
    with pytest.raises(DataError):
        _alone(settings, partner.partner_id, _spec(None, "k") | {"idempotency_key": "x" * 300})
    with session_scope() as session:
        assert session.scalar(select(Event.id)) is None  # nothing written


def test_its_plan_reads_no_event(settings):
    """Whether the key was recorded is the unique index's conflict check, not a look-up:
    PostgreSQL plans a prepared statement once per connection, and a look-up planned
    while the events table was small (as after a deploy, or wherever nothing has
    analyzed it) read every event of the partner, each publish slower than the last
    (9 ms after 48,000 events of 10 partners, where it takes 1)."""
    partner = h.new_partner(settings, DEFAULT)
    assert _alone(settings, partner.partner_id, _spec(None, "k-1")) is not None
    texts = next(t for t in prepared._TEXTS.values() if "INSERT INTO events" in t.prepare)
    with get_database().engine.connect() as connection:
        try:
            cursor = connection.connection.dbapi_connection.cursor()
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute(texts.prepare.replace(texts.name, "probe", 1), {})  # %% as %
            nulls = ", ".join(["NULL"] * texts.execute.count("%("))
            cursor.execute(f"EXPLAIN EXECUTE probe ({nulls})")
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            connection.invalidate()  # its session settings and statement go with it
    assert "Insert on events" in plan
    assert not re.search(r"Scan\b.* on events\b", plan), plan


def test_an_unknown_partner_is_refused(settings):
    with pytest.raises(PartnerNotFound):
        _alone(settings, "00000000-0000-0000-0000-000000000000", _spec(None))


def test_concurrent_fan_out_publishes_keep_every_endpoint_gap_free(settings, wake_ups):
    """Each statement locks the endpoint rows it reserves on until it commits; one that
    loses a deadlock to another is run again whole."""
    partner = h.new_partner(settings, DEFAULT)
    _add(settings, partner.partner_id, BILLING, ["transaction.*"])
    _add(settings, partner.partner_id, ORDERS, None)
    threads, each = 6, 10

    def publisher(n: int) -> list[int]:
        return [len(own_transaction.publish_one(settings, partner_id=partner.partner_id,
                                                type="transaction.paid",
                                                reference=f"r{n}-{i}",
                                                payload={}).deliveries)
                for i in range(each)]

    fanned = [k for ks in race([lambda n=n: publisher(n) for n in range(threads)])
              for k in ks]
    assert fanned == [3] * threads * each
    for url in (DEFAULT, BILLING, ORDERS):
        assert h.endpoint_sequences(partner.partner_id, url) == (
            threads * each, list(range(1, threads * each + 1)))
