"""Compatibility routes in the seed providers' shapes (seeds 001, 002, 004)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from deliverer.models import NotificationStatus, Trigger
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.receiver import sleep, status

SEED001_RETRY = "/api/webhooks/deliveries/{}/retry"
SEED001_LIST = "/api/webhooks/deliveries"
SEED002_RESEND = "/api/v1/merchant/transactions/{}/resend-webhook"
SEED004_RESEND = "/invoices/resend-webhook/{}"

pytestmark = pytest.mark.usefixtures("worker")



# --------------------------------------------------------------------------- seed 001


def test_seed001_retry_success_shape_and_redelivery(make_partner, receiver, slow_ladder):
    receiver.program("/hook", [status(500)], then=status(200))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    response = partner.api.post(SEED001_RETRY.format(nid))
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "deliveryId": nid,
                               "message": "Retry queued successfully."}
    receiver.wait_for(2, "/hook")
    h.wait_until(lambda: h.sent(nid), message="SENT")
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.MANUAL]
    assert h.notification(nid).manual_retry_count == 1


def test_seed001_retry_errors_are_seed000s(make_partner):
    partner = make_partner("http://127.0.0.1:9/hook")
    url = "http://127.0.0.1:9/hook"
    sent = h.insert_notification(partner.partner_id, url, status=NotificationStatus.SENT)
    maxed = h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED,
                                  manual_retry_count=3)
    t.assert_error(partner.api.post(SEED001_RETRY.format("delivery-uuid")), 404, "NOT_FOUND",
                   t.NOT_FOUND)
    t.assert_error(partner.api.post(SEED001_RETRY.format(sent)), 409, "CONFLICT", t.NOT_FAILED)
    t.assert_error(partner.api.post(SEED001_RETRY.format(maxed)), 409, "CONFLICT",
                   t.MAX_MANUAL)


def test_seed001_list_failed_deliveries(make_partner):
    partner = make_partner("http://127.0.0.1:9/hook")
    other = make_partner("http://127.0.0.1:9/hook", name="Other")
    url = "http://127.0.0.1:9/hook"
    t0 = datetime(2025, 5, 1, tzinfo=UTC)
    error = {"kind": "http_status", "message": "HTTP 503", "httpStatus": 503, "hint": "h"}
    failed = [h.insert_notification(partner.partner_id, url, status=NotificationStatus.FAILED,
                                    created_at=t0 + timedelta(minutes=i),
                                    reference=f"TXN-{i}", latest_error_payload=error,
                                    retry_attempts=2)
              for i in range(5)]
    h.insert_notification(partner.partner_id, url, status=NotificationStatus.SENT)
    h.insert_notification(other.partner_id, url,
                          status=NotificationStatus.FAILED)  # someone else's FAILED one

    response = partner.api.get(f"{SEED001_LIST}?status=FAILED")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"data", "nextCursor"}
    assert [d["deliveryId"] for d in body["data"]] == failed[::-1]
    item = body["data"][0]
    assert item["status"] == "FAILED"
    assert item["reference"] == "TXN-4"
    assert item["attempts"] == 2
    assert item["lastError"] == error
    assert set(item) >= {"deliveryId", "eventId", "eventType", "reference", "status",
                         "attempts", "lastError", "createdAt", "nextAttemptAt"}
    # Without a filter: all of this partner's, none of the other's.
    assert len(partner.api.get(SEED001_LIST).json()["data"]) == 6
    # Cursor pagination in the same shape.
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        url_ = f"{SEED001_LIST}?status=FAILED&limit=2" + (f"&cursor={quote(cursor)}"
                                                         if cursor else "")
        page = partner.api.get(url_).json()
        seen += [d["deliveryId"] for d in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == failed[::-1]
    # The deliveryId from the list is what the retry route takes (seed 001's note).
    assert partner.api.post(SEED001_RETRY.format(seen[0])).status_code == 200


@pytest.mark.parametrize("query", ["status=failed", "status=BOGUS", "limit=0", "limit=x",
                                   "cursor=%%%"])
def test_seed001_list_bad_query_is_400(make_partner, query):
    partner = make_partner()
    t.assert_error(partner.api.get(f"{SEED001_LIST}?{query}"), 400, "BAD_REQUEST")


# --------------------------------------------------------------------------- seed 002


def test_seed002_resend_success_shape(make_partner, receiver, long_wait):
    url = receiver.url("/hook")
    partner = make_partner(url)
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT,
                             reference="CO-695E8FF9383839393")
    response = partner.bearer.post(SEED002_RESEND.format("CO-695E8FF9383839393"),
                                   headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "success",
        "message": "Webhook sent successfully",
        "data": {"transaction_id": "CO-695E8FF9383839393", "webhook_url": url},
    }
    receiver.wait_for(2, "/hook")
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]
    assert h.notification(nid).status == NotificationStatus.SENT


def test_seed002_resend_to_the_callback_url(make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/default"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-CB",
                       callback_url=receiver.url("/callback"))
    response = partner.bearer.post(SEED002_RESEND.format("TXN-CB"))
    assert response.json()["data"]["webhook_url"] == receiver.url("/callback")


def test_seed002_not_found_shape(make_partner):
    partner = make_partner("http://127.0.0.1:9/hook")
    response = partner.bearer.post(SEED002_RESEND.format("TXN-1234567890ABCDEF"))
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": "Transaction not found",
                               "data": None}


def test_seed002_pending_and_rate_limited(make_partner, receiver, api_settings):
    receiver.program("/hook", [status(200)], then=sleep(1.0, status(200)))
    partner = make_partner(receiver.url("/hook"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-P")
    with api_settings(resend_wait_seconds=0.2, resend_rate_per_minute=1):
        response = partner.bearer.post(SEED002_RESEND.format("TXN-P"))
        assert response.status_code == 202, response.text
        assert response.json() == {
            "status": "pending", "message": "Webhook resend in progress",
            "data": {"transaction_id": "TXN-P", "webhook_url": receiver.url("/hook")}}
        limited = partner.bearer.post(SEED002_RESEND.format("TXN-P"))
    assert limited.status_code == 429
    assert limited.json() == {"status": "error", "data": None, "message": t.RATE_LIMITED}
    assert limited.headers["Retry-After"].isdigit()


# --------------------------------------------------------------------------- seed 004


def test_seed004_resend_success_shape(make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/hook"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="123")
    response = partner.bearer.post(SEED004_RESEND.format(123),
                                   headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"message", "invoice_id", "status"}
    assert body["invoice_id"] == 123  # a number, as in seed 004
    assert body["status"] == "success"
    assert body["message"]
    receiver.wait_for(2, "/hook")


def test_seed004_non_numeric_invoice_id_is_echoed_as_given(make_partner, receiver, long_wait):
    partner = make_partner(receiver.url("/hook"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="INV-7")
    body = partner.bearer.post(SEED004_RESEND.format("INV-7")).json()
    assert (body["invoice_id"], body["status"]) == ("INV-7", "success")


def test_seed004_pending(make_partner, receiver, api_settings):
    receiver.program("/hook", [status(200)], then=sleep(1.0, status(200)))
    partner = make_partner(receiver.url("/hook"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="124")
    with api_settings(resend_wait_seconds=0.2):
        response = partner.bearer.post(SEED004_RESEND.format(124))
    assert response.status_code in (200, 202), response.text
    body = response.json()
    assert set(body) == {"message", "invoice_id", "status"}
    assert (body["invoice_id"], body["status"]) == (124, "pending")
    receiver.wait_for(2, "/hook")


def test_seed004_non_ascii_digits_are_echoed_as_given(make_partner, receiver, long_wait):
    # "²".isdigit() is true but int("²") fails: that was a 500 after the resend had been
    # recorded and queued.
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="²")
    response = partner.bearer.post(SEED004_RESEND.format("%C2%B2"))
    assert response.status_code == 200, response.text
    assert response.json()["invoice_id"] == "²"
    receiver.wait_for(2, "/hook")
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]


def test_seed004_failed_resend_is_its_500(make_partner, receiver, long_wait):
    # Seed 004's status codes: "500: Internal error while resending webhook".
    receiver.program("/hook", [status(200)], then=status(503))
    partner = make_partner(receiver.url("/hook"))
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="125")
    t.assert_error(partner.bearer.post(SEED004_RESEND.format(125)), 500,
                   "WEBHOOK_DELIVERY_FAILED", "Internal error while resending webhook")
    assert h.triggers(nid) == [Trigger.AUTOMATIC, Trigger.RESEND]
    assert h.notification(nid).status == NotificationStatus.SENT  # a resend changes nothing


@pytest.mark.parametrize("invoice_id", [999, "%D9%A3", "1" * 201, "1" * 5000])
def test_seed004_not_found(make_partner, invoice_id):
    partner = make_partner("http://127.0.0.1:9/hook")
    t.assert_error(partner.bearer.post(SEED004_RESEND.format(invoice_id)), 404, "NOT_FOUND",
                   "Invoice not found")
    assert t.accepted(partner.partner_id, kind="resend") == []


@pytest.mark.parametrize("path", [SEED002_RESEND.format("TXN-1"), SEED004_RESEND.format(1),
                                  SEED001_RETRY.format("8374f327-38bd-4b0b-b8a7-2524599eb903"),
                                  SEED001_LIST])
def test_compat_routes_take_either_header(make_partner, anonymous, path):
    partner = make_partner("http://127.0.0.1:9/hook")
    method = "GET" if path == SEED001_LIST else "POST"
    for client in (partner.api, partner.bearer):
        assert client.request(method, path).status_code in (200, 404)
    if path.startswith("/api/v1/merchant/"):  # seed 002's shape (below)
        missing = anonymous.request(method, path)
        assert (missing.status_code, missing.json()) == (
            401, {"status": "error", "message": t.MISSING, "data": None})
    else:
        t.assert_error(anonymous.request(method, path), 401, "UNAUTHORIZED", t.MISSING)


def test_seed002_answers_every_error_in_its_shape(make_partner, anonymous):
    # Those raised before its view too: the API key, the guards, routing.
    partner = make_partner("http://127.0.0.1:9/hook")
    cases = [
        (anonymous.post(SEED002_RESEND.format("TXN-1")), 401, t.MISSING),
        (partner.bearer.post(SEED002_RESEND.format("%00")), 400,
         "Invalid request: NUL characters are not allowed"),
        (partner.bearer.post(SEED002_RESEND.format("A%2FB")), 404, "Resource not found"),
        (partner.bearer.get(SEED002_RESEND.format("TXN-1")), 405, "Method not allowed"),
        (partner.bearer.post(SEED002_RESEND.format("TXN-1"), data=b"{bad",
                             headers={"Content-Type": "application/json"}), 400,
         "Invalid request: Invalid JSON body."),
    ]
    for response, status_code, message in cases:
        assert (response.status_code, response.json()) == (
            status_code, {"status": "error", "message": message, "data": None})


def test_compat_resend_refusals_are_on_the_audit_trail(make_partner):
    """Seed 002 answers errors in its own shape, seed 004 with its own messages: their
    refusals were answered but not recorded, where the v2 route records them."""
    partner = make_partner("http://127.0.0.1:9/hook")
    for path in (SEED002_RESEND.format("NOPE"), SEED004_RESEND.format("NOPE"),
                 "/api/partner/v2/transactions/NOPE/resend-webhook"):
        assert partner.bearer.post(path).status_code == 404
    outcomes = [r.outcome for r in t.partner_requests(partner.partner_id, kind="resend")]
    assert outcomes == ["NOT_FOUND"] * 3, outcomes
