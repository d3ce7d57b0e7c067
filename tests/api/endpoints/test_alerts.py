"""An endpoint's alerts: named by the endpoint's public id, paged newest first."""

from __future__ import annotations

from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.models import Endpoint
from tests.api import helpers as t
from tests.api.endpoints.helpers import ENDPOINTS, create


def test_alerts_name_their_endpoint_by_its_public_id(make_partner):
    """GET /webhook-alerts gave the endpoint's row id (4, 35), which no route takes."""
    from deliverer.alerts import service as alerts
    from deliverer.models import utcnow

    partner = make_partner("http://127.0.0.1:9/default")
    billing = create(partner, "http://127.0.0.1:9/billing")
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.public_id == billing["id"]))
        alerts.raise_alert(session, endpoint, alerts.KIND_DISABLED, "answered 410 Gone",
                           notification_id=None, now=utcnow())
    listed = partner.api.get("/api/partner/v2/webhook-alerts")
    assert listed.status_code == 200, listed.text
    [alert] = listed.json()["data"]
    assert (alert["endpointId"], alert["kind"]) == (billing["id"], "endpoint_disabled")
    assert partner.api.get(f"{ENDPOINTS}/{alert['endpointId']}").status_code == 200


def test_alerts_are_paged_newest_first(make_partner):
    """At most 200 a page, and there was no next page: older alerts could not be read."""
    from datetime import timedelta

    from deliverer.alerts import service as alerts
    from deliverer.models import utcnow

    partner = make_partner("http://127.0.0.1:9/default")
    billing = create(partner, "http://127.0.0.1:9/billing")
    start = utcnow()
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.public_id == billing["id"]))
        for n in range(5):  # two of them at the same instant: the id breaks the tie
            alerts.raise_alert(session, endpoint, alerts.KIND_DISABLED, f"alert {n}",
                               notification_id=None,
                               now=start + timedelta(seconds=min(n, 3)))
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = partner.api.get("/api/partner/v2/webhook-alerts", params=params)
        assert page.status_code == 200, page.text
        seen += [a["message"] for a in page.json()["data"]]
        cursor, pages = page.json()["nextCursor"], pages + 1
        if cursor is None:
            break
    assert seen == ["alert 4", "alert 3", "alert 2", "alert 1", "alert 0"] and pages == 3
    t.assert_error(partner.api.get("/api/partner/v2/webhook-alerts",
                                   params={"cursor": "garbage"}), 400, "BAD_REQUEST")
