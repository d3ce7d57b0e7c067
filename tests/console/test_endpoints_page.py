"""The console's endpoints page: every partner's registered endpoints, their status, and
the failing ones."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from deliverer.db import session_scope
from deliverer.models import Endpoint, NotificationStatus, utcnow
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
