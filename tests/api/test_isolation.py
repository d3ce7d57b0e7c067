"""Cross-partner isolation on every partner endpoint: another partner's ids and references
are 404, lists show only one's own, settings are one's own; nothing of A changes."""

from __future__ import annotations

import pytest

from deliverer.models import NotificationStatus
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.rows import partner_requests

BASE = "/api/partner/v2"


@pytest.fixture
def two_partners(make_partner, receiver, worker):
    a = make_partner(receiver.url("/a"), name="A", alert_email="a@example.com")
    b = make_partner(receiver.url("/b"), name="B")
    a_rows = {
        "failed": h.insert_notification(a.partner_id, receiver.url("/a"),
                                        status=NotificationStatus.FAILED, reference="TXN-A1"),
        "sent": h.insert_notification(a.partner_id, receiver.url("/a"), reference="TXN-A2",
                                      status=NotificationStatus.SENT),
        "numeric": h.insert_notification(a.partner_id, receiver.url("/a"),
                                         status=NotificationStatus.FAILED, reference="777"),
    }
    return a, b, a_rows


def a_state(a, a_rows):
    return ({name: t.snapshot(nid) for name, nid in a_rows.items()},
            t.settings_row(a.partner_id).url, t.settings_row(a.partner_id).signing_secret)


def test_b_cannot_reach_a_notifications_or_references(two_partners, receiver, api_settings):
    a, b, a_rows = two_partners
    before = a_state(a, a_rows)
    counts = t.row_counts()
    with api_settings(resend_wait_seconds=0.5):
        for nid in a_rows.values():
            for method, path in [
                ("GET", f"{BASE}/webhook-notifications/{nid}"),
                ("POST", f"{BASE}/webhook-notifications/{nid}/retry"),
                ("POST", f"{BASE}/webhook-notifications/{nid}/ignore"),
                ("POST", f"/api/webhooks/deliveries/{nid}/retry"),
            ]:
                for client in (b.api, b.bearer):
                    response = client.request(method, path)
                    t.assert_error(response, 404, "NOT_FOUND", t.NOT_FOUND)
                    assert nid not in response.text
        for reference in ("TXN-A1", "TXN-A2", "777"):
            t.assert_error(b.api.post(f"{BASE}/transactions/{reference}/resend-webhook"),
                           404, "NOT_FOUND", "Transaction not found")
            response = b.bearer.post(f"/api/v1/merchant/transactions/{reference}/resend-webhook")
            assert response.status_code == 404
            assert response.json() == {"status": "error", "message": "Transaction not found",
                                       "data": None}
            t.assert_error(b.bearer.post(f"/invoices/resend-webhook/{reference}"),
                           404, "NOT_FOUND", "Invoice not found")
    assert a_state(a, a_rows) == before
    assert receiver.requests() == []
    assert t.accepted(a.partner_id) == t.accepted(b.partner_id) == []
    after = t.row_counts()
    assert {k: v for k, v in after.items() if k != "partner_requests"} == {
        k: v for k, v in counts.items() if k != "partner_requests"}
    # Every refused request is on B's record, none on A's.
    assert partner_requests(a.partner_id) == []
    assert {r.outcome for r in partner_requests(b.partner_id)} == {"NOT_FOUND"}


def test_lists_show_only_own(two_partners):
    a, b, a_rows = two_partners
    b_nid = h.insert_notification(b.partner_id, "http://127.0.0.1:9/b",
                                  status=NotificationStatus.FAILED, reference="TXN-A1")
    for client in (b.api, b.bearer):
        for path in (f"{BASE}/webhook-notifications",
                     f"{BASE}/webhook-notifications?reference=TXN-A1",
                     f"{BASE}/webhook-notifications?status=FAILED"):
            data = client.get(path).json()["data"]
            assert [d["id"] for d in data] == [b_nid], path
        deliveries = client.get("/api/webhooks/deliveries?status=FAILED").json()["data"]
        assert [d["deliveryId"] for d in deliveries] == [b_nid]
    assert {d["id"] for d in a.api.get(f"{BASE}/webhook-notifications").json()["data"]} == set(
        a_rows.values())


def test_same_reference_resends_only_own_event(two_partners, receiver, api_settings):
    _a, b, _ = two_partners
    b_nid = h.insert_notification(b.partner_id, receiver.url("/b"), reference="TXN-A1",
                                  status=NotificationStatus.SENT)
    with api_settings(resend_wait_seconds=10.0):
        response = b.api.post(f"{BASE}/transactions/TXN-A1/resend-webhook")
    assert response.status_code == 200, response.text
    assert response.json()["notificationId"] == b_nid
    assert response.json()["webhookUrl"] == receiver.url("/b")
    receiver.wait_for(1, "/b")
    assert receiver.requests("/a") == []


def test_settings_are_per_partner(two_partners, receiver):
    a, b, a_rows = two_partners
    before = a_state(a, a_rows)
    b_settings = b.api.get(f"{BASE}/webhook-settings").json()
    assert b_settings["url"] == receiver.url("/b")
    assert b_settings["signingSecret"] == b.signing_secret != a.signing_secret
    assert b_settings["alertEmail"] is None  # not A's
    assert b.api.put(f"{BASE}/webhook-settings",
                     json={"url": receiver.url("/b2"), "enabled": False}).status_code == 200
    assert b.api.post(f"{BASE}/webhook-settings/rotate-secret", json={}).status_code == 200
    assert a_state(a, a_rows) == before
    a_settings = a.api.get(f"{BASE}/webhook-settings").json()
    assert (a_settings["url"], a_settings["enabled"], a_settings["alertEmail"]) == (
        receiver.url("/a"), True, "a@example.com")
    assert a_settings["previousSecretExpiresAt"] is None
