"""Fan-out: one notification per registered endpoint whose subscriptions match, each with
its own id, its own gap-free sequence and its own signing secret."""

from __future__ import annotations

import pytest
from sqlalchemy import select

import deliverer
from deliverer.db import session_scope
from deliverer.models import Endpoint, Notification, NotificationStatus
from deliverer.partners import registered, webhook_settings
from deliverer.publishing.own_transaction import publish_one
from deliverer.publishing.service import record_event
from tests.support import helpers as h

DEFAULT = "http://127.0.0.1:9/default"
BILLING = "http://127.0.0.1:9/billing"
ORDERS = "http://127.0.0.1:9/orders"


def add(settings, partner_id: str, url: str, event_types: list[str] | None = None,
        **fields) -> Endpoint:
    with session_scope() as session:
        endpoint = registered.create(session, settings, partner_id, url=url,
                                     event_types=event_types, **fields)
        session.expunge(endpoint)
    return endpoint


def publish(settings, partner_id: str, event_type: str, **fields):
    return publish_one(settings, partner_id=partner_id, type=event_type,
                       reference=fields.pop("reference", "ref-1"), payload={"n": 1}, **fields)


def urls_of(published) -> dict[str, int | None]:
    with session_scope() as session:
        rows = session.execute(select(Notification.url, Notification.sequence).where(
            Notification.event_id == published.event_id)).all()
    return dict(rows)


def test_each_event_goes_to_the_endpoints_subscribed_to_it(settings):
    shop = h.new_partner(settings, DEFAULT)
    billing = add(settings, shop.partner_id, BILLING, ["invoice.*"])
    add(settings, shop.partner_id, ORDERS, ["transaction.paid", "payment.status.updated"])

    paid = publish(settings, shop.partner_id, "transaction.paid")
    settled = publish(settings, shop.partner_id, "invoice.settled")
    failed = publish(settings, shop.partner_id, "transaction.failed")

    assert urls_of(paid) == {DEFAULT: 1, ORDERS: 1}
    assert urls_of(settled) == {DEFAULT: 2, BILLING: 1}
    assert urls_of(failed) == {DEFAULT: 3}
    # The default endpoint's notification is the one older routes report, first.
    assert (settled.notification_id, settled.sequence) == (
        settled.deliveries[0].notification_id, 2)
    assert [d.endpoint_id for d in settled.deliveries][1] == billing.public_id
    ids = [d.notification_id for p in (paid, settled, failed) for d in p.deliveries]
    assert len(set(ids)) == len(ids) == 5


def test_sequences_stay_gap_free_per_endpoint_through_a_rolled_back_publish(settings):
    shop = h.new_partner(settings, None)
    add(settings, shop.partner_id, BILLING, ["*"])
    add(settings, shop.partner_id, ORDERS, ["transaction.*"])
    publish(settings, shop.partner_id, "transaction.paid")
    with pytest.raises(RuntimeError), session_scope() as session:
        record_event(session, settings, partner_id=shop.partner_id, type="transaction.paid",
                     reference="r", payload={})
        raise RuntimeError("the producer's transaction fails after the publish")
    publish(settings, shop.partner_id, "transaction.paid")
    publish(settings, shop.partner_id, "invoice.settled")
    assert h.endpoint_sequences(shop.partner_id, BILLING)[1] == [1, 2, 3]
    assert h.endpoint_sequences(shop.partner_id, ORDERS)[1] == [1, 2]


def test_a_callback_url_overrides_the_subscriptions(settings):
    shop = h.new_partner(settings, DEFAULT)
    add(settings, shop.partner_id, BILLING)
    published = publish(settings, shop.partner_id, "invoice.settled",
                        callback_url="http://127.0.0.1:9/just-this-one")
    assert urls_of(published) == {"http://127.0.0.1:9/just-this-one": 1}


def test_disabled_endpoints_record_not_sent_and_deleted_ones_get_nothing(settings):
    shop = h.new_partner(settings, DEFAULT)
    off = add(settings, shop.partner_id, BILLING, enabled=False)
    gone = add(settings, shop.partner_id, ORDERS)
    with session_scope() as session:
        registered.delete(session, registered.get(session, shop.partner_id, gone.public_id))
    published = publish(settings, shop.partner_id, "invoice.settled")
    by_endpoint = {d.endpoint_id: d for d in published.deliveries}
    assert set(by_endpoint) == {published.deliveries[0].endpoint_id, off.public_id}
    assert by_endpoint[off.public_id].status == NotificationStatus.NOT_SENT
    row = h.notification(by_endpoint[off.public_id].notification_id)
    assert row.latest_error_payload["message"] == registered.DISABLED_BY_MERCHANT


def test_an_event_no_endpoint_subscribes_to_is_recorded_not_sent(settings):
    shop = h.new_partner(settings, None)
    add(settings, shop.partner_id, BILLING, ["invoice.*"])
    published = publish(settings, shop.partner_id, "transaction.paid")
    assert published.status == NotificationStatus.NOT_SENT
    row = h.notification(published.notification_id)
    assert row.endpoint_id is None and row.url is None
    assert "No endpoint is subscribed to event type transaction.paid" in \
        row.latest_error_payload["message"]


def test_changing_the_webhook_url_moves_the_default_endpoint(settings):
    shop = h.new_partner(settings, DEFAULT)
    add(settings, shop.partner_id, BILLING)
    with session_scope() as session:
        webhook_settings.update_settings(session, settings, shop.partner_id, url=ORDERS)
    with session_scope() as session:
        listed = [(e.url, e.is_default) for e in registered.listed(session, shop.partner_id)]
    assert sorted(listed) == [(BILLING, False), (ORDERS, True)]
    assert urls_of(publish(settings, shop.partner_id, "transaction.paid")) == {
        ORDERS: 1, BILLING: 1}


@pytest.mark.usefixtures("worker")
def test_each_endpoint_gets_its_own_signed_delivery(settings, receiver):
    """Real worker and receiver: the default endpoint signs with the partner's secret,
    a registered one with its own (checked with the standardwebhooks reference)."""
    shop = h.new_partner(settings, receiver.url("/default"))
    with session_scope() as session:
        own = registered.create(session, settings, shop.partner_id,
                                url=receiver.url("/billing"), event_types=["invoice.*"])
        own_secret = own.signing_secret
    published = deliverer.publish_event(shop.partner_id, "invoice.settled", "INV-9",
                                        {"invoice_id": 9})
    assert len(published.deliveries) == 2
    for delivery in published.deliveries:
        h.wait_until(lambda d=delivery: h.sent(d.notification_id), message="SENT")
    [to_default] = receiver.requests("/default")
    [to_billing] = receiver.requests("/billing")
    assert h.verify_signature(shop.signing_secret, to_default)["reference"] == "INV-9"
    assert h.verify_signature(own_secret, to_billing)["reference"] == "INV-9"
    assert to_default.headers["webhook-id"] != to_billing.headers["webhook-id"]
