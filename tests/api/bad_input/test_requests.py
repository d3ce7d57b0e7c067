"""Requests refused before any body is used: too large (413), a bad or differently spelled
id (404), a body where none is read, NUL characters in the path or query (400), a wrong
method (405), an unknown path (404)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from deliverer.models import NotificationStatus
from tests.api import helpers as t
from tests.api.bad_input.helpers import BASE, BIG, JSON, ROTATE, SETTINGS, unchanged
from tests.support.rows import partner_requests


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", SETTINGS),
    ("POST", ROTATE),
    ("POST", f"{BASE}/webhook-notifications/{{nid}}/retry"),
    ("POST", f"{BASE}/webhook-notifications/{{nid}}/ignore"),
    ("POST", f"{BASE}/transactions/TXN-1/resend-webhook"),
    ("GET", f"{BASE}/webhook-notifications"),
    ("POST", "/api/webhooks/deliveries/{nid}/retry"),
    ("POST", "/api/v1/merchant/transactions/TXN-1/resend-webhook"),
    ("POST", "/invoices/resend-webhook/TXN-1"),
])
@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_413(partner, failed, method, path, chunked):
    payload = json.dumps({"url": "http://127.0.0.1:9/x", "pad": "x" * BIG}).encode()

    def check():
        # A generator is sent chunked (Transfer-Encoding), without a Content-Length.
        data = iter([payload[:1000], payload[1000:]]) if chunked else payload
        response = partner.api.request(method, path.format(nid=failed), data=data,
                                       headers=JSON)
        t.assert_error(response, 413, "PAYLOAD_TOO_LARGE", "Request body too large")

    unchanged(partner, check)
    assert t.snapshot(failed)["status"] == NotificationStatus.FAILED
    assert t.snapshot(failed)["manual_retry_count"] == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_body_just_under_the_limit_is_read(partner, chunked):
    payload = json.dumps({"enabled": True, "x": "y" * (200 * 1024)})
    data = iter([payload[:1000].encode(), payload[1000:].encode()]) if chunked else payload
    # Read, and refused for its unknown field: the size itself was fine.
    response = partner.api.put(SETTINGS, data=data, headers=JSON)
    t.assert_error(response, 400, "BAD_REQUEST")
    assert "x" in response.json()["errors"]["json"]


@pytest.mark.parametrize("bad_id", ["x" * 3000, "..%2F..%2Fetc", "%2e%2e", "null", "-1",
                                    "00000000-0000-0000-0000-000000000000", "{id}", "%C3%A9"])
@pytest.mark.parametrize("action", ["", "/retry", "/ignore"])
def test_bad_ids_are_404(partner, bad_id, action):
    method = "GET" if action == "" else "POST"

    def check():
        response = partner.api.request(method, f"{BASE}/webhook-notifications/{bad_id}{action}")
        t.assert_client_error(response, 404)

    unchanged(partner, check)


def spellings(nid: str) -> list[str]:
    """Forms of a real notification id that uuid.UUID() takes but that are not it (upper
    case is it: test_retry's test_an_upper_case_notification_id_is_the_same_notification)."""
    hexits = nid.replace("-", "")
    return ["urn:uuid:" + nid, "{" + nid + "}", hexits, "-".join(hexits),
            "urn:uuid:" + "-".join(hexits), nid + "-"]


@pytest.mark.parametrize("path", [
    f"{BASE}/webhook-notifications/{{nid}}/retry",
    f"{BASE}/webhook-notifications/{{nid}}/ignore",
    f"{BASE}/transactions/TXN-1/resend-webhook",
    "/api/v1/merchant/transactions/TXN-1/resend-webhook",  # seed 002
])
@pytest.mark.parametrize("body", [b"{not json", b'{"a":', b'{"a":"\xff\xfe"}'])
def test_a_malformed_json_body_is_refused_where_no_body_is_read(partner, failed, path, body):
    # These routes read no body: a malformed one ran the action (an ignore, for good).
    before = t.snapshot(failed)

    def check():
        response = partner.api.post(path.format(nid=failed), data=body,
                                    headers={"Content-Type": "application/json"})
        t.assert_error(response, 400, "BAD_REQUEST", "Invalid request: Invalid JSON body.")

    unchanged(partner, check)
    assert t.snapshot(failed) == before


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"{BASE}/webhook-notifications/{{}}"),
    ("POST", f"{BASE}/webhook-notifications/{{}}/retry"),
    ("POST", f"{BASE}/webhook-notifications/{{}}/ignore"),
    ("POST", "/api/webhooks/deliveries/{}/retry"),  # seed 001
])
def test_other_spellings_of_an_id_are_404(partner, failed, method, path):
    # A 72-character "uuid" went into the audit trail's String(36) column: a DataError
    # (500) on PostgreSQL, fine on SQLite; these tests run on both backends.
    before = t.snapshot(failed)

    def check():
        for spelling in spellings(failed):
            response = partner.api.request(method, path.format(quote(spelling, safe="")))
            t.assert_error(response, 404, "NOT_FOUND", t.NOT_FOUND)

    unchanged(partner, check)
    assert t.snapshot(failed) == before
    recorded = {r.notification_id for r in partner_requests(partner.partner_id)}
    assert recorded <= {None, failed.upper()}


@pytest.mark.parametrize("path", [
    f"{BASE}/webhook-notifications/a%00b",
    f"{BASE}/webhook-notifications/a%00b/retry",
    f"{BASE}/transactions/TXN%001/resend-webhook",
    "/api/v1/merchant/transactions/TXN%001/resend-webhook",
    "/invoices/resend-webhook/1%00",
    f"{BASE}/webhook-notifications?reference=TXN%001",
    f"{BASE}/webhook-notifications?eventType=a%00",
    f"{BASE}/webhook-notifications?cursor=%00",
    f"{BASE}/webhook-notifications?a%00=1",
])
def test_nul_characters_in_path_or_query_are_400(partner, path):
    method = "GET" if "?" in path or path.endswith("b") else "POST"

    def check():
        t.assert_error(partner.api.request(method, path), 400, "BAD_REQUEST")

    unchanged(partner, check)


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", SETTINGS),
    ("PATCH", SETTINGS),
    ("GET", f"{BASE}/webhook-notifications/8374f327-38bd-4b0b-b8a7-2524599eb903/retry"),
    ("PUT", f"{BASE}/webhook-notifications"),
    ("GET", f"{BASE}/transactions/TXN-1/resend-webhook"),
    ("DELETE", "/api/webhooks/deliveries"),
])
def test_wrong_method_is_405(partner, method, path):
    def check():
        t.assert_error(partner.api.request(method, path), 405, "METHOD_NOT_ALLOWED")

    unchanged(partner, check)


@pytest.mark.parametrize("path", [f"{BASE}/nope", "/api/partner/v3/webhook-notifications",
                                  f"{BASE}/transactions/a/b/resend-webhook", "/", "/api"])
def test_unknown_path_is_404(partner, path):
    t.assert_error(partner.api.get(path), 404, "NOT_FOUND")
