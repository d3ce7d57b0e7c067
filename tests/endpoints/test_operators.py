"""What operators count per endpoint: ``deliverer stats``' success rates and endpoint
statuses, for a partner with several endpoints."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from deliverer.db import session_scope
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.operations import stats
from deliverer.partners import registered
from tests.operations.helpers import add_attempt
from tests.support import helpers as h


def test_stats_count_each_endpoint_of_a_partner_on_its_own(settings):
    default, billing = "http://127.0.0.1:9/default", "http://127.0.0.1:9/billing"
    shop = h.new_partner(settings, default)
    with session_scope() as session:
        endpoint = registered.create(session, settings, shop.partner_id, url=billing)
        billing_id = endpoint.public_id
        session.execute(update(Endpoint).where(Endpoint.id == endpoint.id)
                        .values(failing_since=utcnow()))
    now = utcnow()
    to_default = h.insert_notification(shop.partner_id, default,
                                       status=NotificationStatus.SENT)
    to_billing = h.insert_notification(shop.partner_id, billing,
                                       status=NotificationStatus.FAILED)
    add_attempt(to_default, now - timedelta(minutes=1), success=True, url=default)
    for minutes in (1, 2, 3):
        add_attempt(to_billing, now - timedelta(minutes=minutes), success=False, url=billing)
    add_attempt(to_billing, now - timedelta(minutes=4), success=True, url=billing)

    with session_scope() as session:
        result = stats.collect(session, window=timedelta(hours=1))
    lines = {(r.endpoint_id, r.url): (r.attempts, r.successes) for r in result.endpoints}
    assert lines[(billing_id, billing)] == (4, 1)
    assert (4, 1) != lines[next(k for k in lines if k[1] == default)] == (1, 1)
    assert result.endpoints[0].endpoint_id == billing_id  # worst first
    assert result.endpoint_statuses == {"ACTIVE": 1, "FAILING": 1, "DISABLED": 0}
    assert result.as_dict()["endpoints"][0]["endpointId"] == billing_id
