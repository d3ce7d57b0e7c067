"""The console's endpoints page: every partner's registered endpoints, their status, and
the failing ones."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import update

from deliverer.db import session_scope
from deliverer.models import Endpoint, Notification, NotificationStatus, utcnow
from deliverer.operations import inspect
from deliverer.partners import registered
from tests.support import helpers as h


def two_shops(settings) -> dict[str, str]:
    """Two partners; the first with a default endpoint, a failing one with a rate limit
    and a disabled one. Returns the public ids by name."""
    shop = h.new_partner(settings, "http://127.0.0.1:9/default", name="Two Hooks Ltd")
    h.new_partner(settings, "http://127.0.0.1:9/other", name="Other Co")
    with session_scope() as session:
        billing = registered.create(session, settings, shop.partner_id,
                                    url="http://127.0.0.1:9/billing", description="Billing",
                                    event_types=["invoice.*"], rate_limit=5)
        off = registered.create(session, settings, shop.partner_id,
                                url="http://127.0.0.1:9/off", enabled=False)
        ids = {"billing": billing.public_id, "off": off.public_id}
        session.execute(update(Endpoint).where(Endpoint.id == billing.id).values(
            failing_since=utcnow() - timedelta(hours=2), consecutive_failures=4))
    h.insert_notification(shop.partner_id, "http://127.0.0.1:9/billing",
                          status=NotificationStatus.FAILED, next_attempt_at=utcnow()
                          + timedelta(hours=1), retry_attempts=4)
    return ids


def test_endpoints_are_listed_per_partner_with_their_status(operator, settings):
    ids = two_shops(settings)
    page = operator.get("/console/endpoints")
    assert page.status_code == 200
    text = page.text
    assert text.count('class="partner-endpoint') == 4
    assert text.index("Other Co") < text.index("Two Hooks Ltd")  # by partner name
    for public_id in ids.values():
        assert public_id in text
    assert "default (webhook settings)" in text and "Billing" in text
    assert "invoice.*" in text and "5/s" in text
    assert "FAILING" in text and "DISABLED" in text and "Disabled by the merchant" in text
    assert "1 in queue" in text

    one = operator.get("/console/endpoints", params={"partner": "two hooks"}).text
    assert one.count('class="partner-endpoint') == 3 and "Other Co" not in one
    failing = operator.get("/console/endpoints",
                           params={"partner": "Two Hooks", "failing": "1"}).text
    assert failing.count('class="partner-endpoint') == 2
    assert ids["billing"] in failing and ids["off"] in failing
    assert "/default" not in failing
    assert 'id="no-endpoints"' in operator.get("/console/endpoints",
                                                params={"partner": "nobody"}).text


def test_the_failing_endpoints_page_names_registered_endpoints(operator, settings):
    ids = two_shops(settings)
    text = operator.get("/console/").text
    assert ids["billing"] in text and "Billing" in text


def test_a_healthy_endpoints_last_success_is_shown(operator, settings):
    """A healthy endpoint's success writes nothing to its row: the page showed '—' for
    endpoints with hundreds of deliveries, read as 'never delivered' (a black-box try)."""
    shop = h.new_partner(settings, "http://127.0.0.1:9/healthy", name="Healthy Co")
    delivered = utcnow() - timedelta(minutes=3)
    for status, sent_at in ((NotificationStatus.SENT, delivered - timedelta(hours=1)),
                            (NotificationStatus.SENT, delivered),
                            (NotificationStatus.PENDING, None)):
        nid = h.insert_notification(shop.partner_id, "http://127.0.0.1:9/healthy",
                                    status=status)
        with session_scope() as session:
            session.execute(update(Notification).where(Notification.id == nid)
                            .values(sent_at=sent_at))
    never = h.new_partner(settings, "http://127.0.0.1:9/never", name="Never Co")
    h.insert_notification(never.partner_id, "http://127.0.0.1:9/never",
                          status=NotificationStatus.PENDING)
    text = operator.get("/console/endpoints").text
    cells = re.findall(r'<td class="last-success">([^<]*)</td>', text)
    # By partner name: Healthy Co's newest delivery, then Never Co's none.
    assert len(cells) == 2 and cells[0].startswith("3m ") and cells[1] == "—", cells


def test_each_listed_endpoint_counts_what_it_holds(settings):
    """Pending, queued (climbing or held) and held, per endpoint, counted for the listed
    endpoints alone; an exhausted FAILED one is not queued."""
    shop = h.new_partner(settings, "http://127.0.0.1:9/a", name="A Shop")
    other = h.new_partner(settings, "http://127.0.0.1:9/b", name="B Shop")
    soon = utcnow() + timedelta(hours=1)
    for status, due in ((NotificationStatus.PENDING, utcnow()),
                        (NotificationStatus.FAILED, soon),
                        (NotificationStatus.FAILED, None)):  # exhausted
        h.insert_notification(shop.partner_id, "http://127.0.0.1:9/a", status=status,
                              next_attempt_at=due)
    held = h.insert_notification(shop.partner_id, "http://127.0.0.1:9/a",
                                 status=NotificationStatus.FAILED)
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == held)
                        .values(held=True))
    for _ in range(2):
        h.insert_notification(other.partner_id, "http://127.0.0.1:9/b",
                              status=NotificationStatus.PENDING, next_attempt_at=utcnow())
    with session_scope() as session:
        rows = inspect.partner_endpoints(session)
        first = inspect.partner_endpoints(session, limit=1)
    assert [(r.partner_name, r.pending, r.queued, r.held) for r in rows] == [
        ("A Shop", 1, 2, 1), ("B Shop", 2, 0, 0)]
    assert [(r.partner_name, r.pending, r.queued, r.held) for r in first] == [
        ("A Shop", 1, 2, 1)]
