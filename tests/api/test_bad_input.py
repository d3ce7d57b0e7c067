"""Bad input of every kind: a clear 4xx in the error format, never a 500, nothing written."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from deliverer.models import NotificationStatus
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.rows import partner_requests

BASE = "/api/partner/v2"
SETTINGS = f"{BASE}/webhook-settings"
ROTATE = f"{BASE}/webhook-settings/rotate-secret"
JSON = {"Content-Type": "application/json"}
BIG = 300 * 1024  # over the 256 KiB request limit


@pytest.fixture
def partner(make_partner):
    return make_partner("http://127.0.0.1:9/hook")


@pytest.fixture
def failed(partner):
    return h.insert_notification(partner.partner_id, "http://127.0.0.1:9/hook",
                                 status=NotificationStatus.FAILED, reference="TXN-1")


def unchanged(partner, check):
    """Run ``check`` and prove that no table and no setting changed (refusals may be logged)."""
    counts = t.row_counts()
    row = t.settings_row(partner.partner_id)
    check()
    after = t.row_counts()
    assert {k: v for k, v in after.items() if k != "partner_requests"} == {
        k: v for k, v in counts.items() if k != "partner_requests"}
    assert t.accepted(partner.partner_id) == []
    now = t.settings_row(partner.partner_id)
    assert (now.url, now.enabled, now.alert_email, now.signing_secret, now.updated_at) == (
        row.url, row.enabled, row.alert_email, row.signing_secret, row.updated_at)


MALFORMED = ["{", "{'url': 'http://x'}", '{"url": }', "nul", "[1, 2", '{"a": 1}{',
             "\ufeff{}", "null", "[]", "1", '"text"', "true", '{"enabled": NaN}']


@pytest.mark.parametrize("body", MALFORMED)
@pytest.mark.parametrize("path", [SETTINGS, ROTATE])
def test_malformed_json_is_400(partner, path, body):
    method = "PUT" if path == SETTINGS else "POST"

    def check():
        response = partner.api.request(method, path, data=body.encode(), headers=JSON)
        t.assert_error(response, 400, "BAD_REQUEST")

    unchanged(partner, check)


@pytest.mark.parametrize("body", [
    {"url": 123},
    {"url": ["http://127.0.0.1/hook"]},
    {"url": {"href": "http://127.0.0.1/hook"}},
    {"enabled": "maybe"},
    {"enabled": [True]},
    # JSON's true and false only: marshmallow's Boolean takes these too.
    {"enabled": "yes"},
    {"enabled": "true"},
    {"enabled": 1},
    {"enabled": None},
    {"alertEmail": 42},
    {"alertEmail": ["a@example.com"]},
    {"alertEmail": {"to": "a@example.com"}},
    {"alertEmail": "a" * 65 + "@example.com"},  # RFC 5321: mail servers refuse it
])
def test_wrong_types_are_400(partner, body):
    def check():
        body_ = t.assert_error(partner.api.put(SETTINGS, json=body), 400, "BAD_REQUEST")
        field = next(iter(body))
        assert field in body_["message"]
        assert "errors" in body_

    unchanged(partner, check)


@pytest.mark.parametrize("body", [
    {"foo": 1},
    {"url": "http://127.0.0.1:9/new", "signingSecret": "whsec_x"},  # read-only field
    {"enabled": False, "partnerId": "someone-else"},
    {"URL": "http://127.0.0.1:9/new"},
    {"alert_email": "a@example.com"},  # the Python name, not the API's
])
def test_unknown_fields_are_400_and_nothing_is_applied(partner, body):
    def check():
        t.assert_error(partner.api.put(SETTINGS, json=body), 400, "BAD_REQUEST")

    unchanged(partner, check)


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


@pytest.mark.parametrize("body", [
    {"url": "http://127.0.0.1:9/ho\u0000ok"},
    {"alertEmail": "a\u0000@example.com"},
    {"url": "http://127.0.0.1:9/hook", "\u0000": 1},
])
def test_nul_characters_in_json_are_400(partner, body):
    def check():
        t.assert_error(partner.api.put(SETTINGS, json=body), 400, "BAD_REQUEST")

    unchanged(partner, check)


SURROGATE = '"\\ud800"'  # a JSON string with a lone surrogate escape


@pytest.mark.parametrize("body", [
    '{"url": "http://1.1.1.1/' + SURROGATE[1:] + "}",
    '{"alertEmail": "a' + SURROGATE[1:-1] + '@example.com"}',
    '{"url": "http://127.0.0.1:9/hook", ' + SURROGATE + ": 1}",
    '{"url": "http://127.0.0.1:9/\\udfff"}',
    '{"url": "http://127.0.0.1:9/\\ude00\\ud83d"}',  # a pair, the wrong way round
])
def test_lone_surrogates_in_json_are_400(partner, body):
    def check():
        response = partner.api.put(SETTINGS, data=body.encode(), headers=JSON)
        assert "surrogate" in t.assert_error(response, 400, "BAD_REQUEST")["message"]

    unchanged(partner, check)


def test_surrogate_pairs_in_json_are_text(partner):
    response = partner.api.put(SETTINGS, data=b'{"url": "http://127.0.0.1:9/\\ud83d\\ude00"}',
                               headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["url"] == "http://127.0.0.1:9/\U0001f600"


@pytest.mark.parametrize("field", ["partnerId", "type", "reference", "callbackUrl", "payload"])
def test_internal_publish_lone_surrogates_are_400(partner, admin, field):
    body = {"partnerId": partner.partner_id, "type": "t", "reference": "R", "payload": {},
            "callbackUrl": "http://127.0.0.1:9/cb"}
    body[field] = {"note": "\ud800"} if field == "payload" else body[field] + "\ud800"

    def check():
        response = admin.post("/internal/v1/events", data=json.dumps(body), headers=JSON)
        t.assert_error(response, 400, "BAD_REQUEST")

    unchanged(partner, check)


@pytest.mark.parametrize("field", ["name", "webhookUrl", "alertEmail"])
def test_internal_create_partner_lone_surrogates_are_400(partner, admin, field):
    body = {"name": "n", "webhookUrl": "http://127.0.0.1:9/hook", "alertEmail": "a@example.com"}
    body[field] = body[field].replace("@", "\udc80@") if field == "alertEmail" \
        else body[field] + "\udc80"

    def check():
        response = admin.post("/internal/v1/partners", data=json.dumps(body), headers=JSON)
        t.assert_error(response, 400, "BAD_REQUEST")

    unchanged(partner, check)


def publish_body(partner_id: str, payload: str) -> bytes:
    head = json.dumps({"partnerId": partner_id, "type": "t", "reference": "R"})
    return f'{head[:-1]}, "payload": {payload}}}'.encode()


@pytest.mark.parametrize("payload", [
    '{"amount": NaN, "fee": 1e999}',  # was a 201 and a stored, signed body that is no JSON
    '{"amount": Infinity}',
    '{"amount": -Infinity}',
    '{"amount": 1e999}',
    '{"amount": -1E+400}',
    '{"amount": [1.5, {"x": 2e308}]}',
    '{"amount": ' + "1" * 5000 + "}",  # int() refuses it: was a 500
])
def test_internal_publish_numbers_json_cannot_carry_are_400(partner, admin, payload):
    def check():
        response = admin.post("/internal/v1/events", data=publish_body(partner.partner_id, payload),
                              headers=JSON)
        t.assert_error(response, 400, "BAD_REQUEST")

    unchanged(partner, check)


@pytest.mark.parametrize("payload", ['{"amount": 1, "amount": 2}',
                                     '{"order": {"id": "A", "id": "B"}}',
                                     '[{"x": 1}, {"y": 1, "y": 1}]'])
def test_internal_publish_a_key_twice_in_an_object_is_400(partner, admin, payload):
    """Python keeps the last value, another parser the first: a body meaning two
    things is refused, not forwarded and signed."""
    def check():
        response = admin.post("/internal/v1/events", data=publish_body(partner.partner_id, payload),
                              headers=JSON)
        t.assert_error(response, 400, "BAD_REQUEST")
        assert "appears twice" in response.json()["message"]

    unchanged(partner, check)


def test_a_key_twice_at_the_top_is_400_in_partner_routes(partner):
    def check():
        response = partner.api.post(ROTATE, data=b'{"overlapSeconds": 60, '
                                    b'"overlapSeconds": 0}', headers=JSON)
        t.assert_error(response, 400, "BAD_REQUEST")
        assert '"overlapSeconds" appears twice' in response.json()["message"]

    unchanged(partner, check)


@pytest.mark.parametrize("body", ['{"overlapSeconds": NaN}', '{"overlapSeconds": 1e999}',
                                  '{"overlapSeconds": ' + "9" * 4301 + "}"])
def test_numbers_json_cannot_carry_are_400_in_partner_routes(partner, body):
    def check():
        t.assert_error(partner.api.post(ROTATE, data=body.encode(), headers=JSON), 400,
                       "BAD_REQUEST")

    unchanged(partner, check)


def test_large_finite_numbers_are_published_as_sent(partner, admin, receiver, worker):
    partner_ = admin.post("/internal/v1/partners",
                          json={"name": "Numbers", "webhookUrl": receiver.url("/hook")}).json()
    payload = '{"big": 1.7976931348623157e308, "long": ' + "9" * 4300 + "}"
    response = admin.post("/internal/v1/events", data=publish_body(partner_["id"], payload),
                          headers=JSON)
    assert response.status_code == 201, response.text
    [got] = receiver.wait_for(1, "/hook")
    data = json.loads(got.body)["data"]
    assert data == {"big": 1.7976931348623157e308, "long": int("9" * 4300)}


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("body", [
    nested(1000),  # the parser's RecursionError, which was a 500
    nested(100_000),
    nested(65),  # one level more than the guard takes
    nested(100, '"\\u0000"'),  # a NUL deeper than the old walk looked
    '{"url": "http://127.0.0.1:9/x", "x": ' + nested(70) + "}",
])
@pytest.mark.parametrize(("method", "path"), [
    ("PUT", SETTINGS),
    ("POST", f"{BASE}/webhook-notifications/{{nid}}/retry"),  # a route that reads no body
    ("POST", "/invoices/resend-webhook/TXN-1"),
    ("POST", "/internal/v1/events"),
])
def test_json_nested_too_deeply_is_400(partner, failed, method, path, body):
    def check():
        response = partner.api.request(method, path.format(nid=failed), data=body.encode(),
                                       headers=JSON)
        t.assert_error(response, 400, "BAD_REQUEST")

    unchanged(partner, check)
    assert t.snapshot(failed)["status"] == NotificationStatus.FAILED


def test_json_nested_as_deep_as_allowed_is_published(partner, admin):
    payload: object = 1
    for _ in range(62):  # with the body's object and the payload's, 64 levels
        payload = [payload]
    response = admin.post("/internal/v1/events", json={
        "partnerId": partner.partner_id, "type": "t", "reference": "R", "payload": {"a": payload}})
    assert response.status_code == 201, response.text


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


# --------------------------------------------------------------------------- internal API


@pytest.mark.parametrize("body", [
    {},
    {"type": "transaction.paid", "reference": "R", "payload": {}},  # no partnerId
    {"partnerId": "{pid}", "reference": "R", "payload": {}},  # no type
    {"partnerId": "{pid}", "type": "t", "payload": {}},  # no reference
    {"partnerId": "{pid}", "type": "t", "reference": "R"},  # no payload
    {"partnerId": "{pid}", "type": "t", "reference": "R", "payload": [1]},
    {"partnerId": "{pid}", "type": "t", "reference": "R", "payload": "x"},
    {"partnerId": "{pid}", "type": "", "reference": "R", "payload": {}},
    {"partnerId": "{pid}", "type": "t" * 101, "reference": "R", "payload": {}},
    {"partnerId": "{pid}", "type": "t", "reference": "R" * 201, "payload": {}},
    {"partnerId": "{pid}", "type": 5, "reference": "R", "payload": {}},
    {"partnerId": "{pid}", "type": "t", "reference": "R", "payload": {},
     "callbackUrl": "ftp://example.com/"},
    {"partnerId": "{pid}", "type": "t", "reference": "R", "payload": {}, "extra": 1},
    {"partnerId": "8374f327-38bd-4b0b-b8a7-2524599eb903", "type": "t", "reference": "R",
     "payload": {}},  # unknown partner: 404
    {"partnerId": "x" * 37, "type": "t", "reference": "R", "payload": {}},
    {"partnerId": "{pid}", "type": "t\u0000", "reference": "R", "payload": {}},
])
def test_internal_publish_bad_input(partner, admin, body):
    body = json.loads(json.dumps(body).replace("{pid}", partner.partner_id))

    def check():
        t.assert_client_error(admin.post("/internal/v1/events", json=body))

    unchanged(partner, check)


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": 5}, {"name": "x" * 201},
                                  {"name": "n", "flow": "CARRIER_PIGEON"},
                                  {"name": "n", "webhookUrl": "gopher://x"},
                                  {"name": "n", "alertEmail": "nope"},
                                  {"name": "n", "apiKey": "dlv_" + "0" * 48}])
def test_internal_create_partner_bad_input(partner, admin, body):
    def check():
        t.assert_error(admin.post("/internal/v1/partners", json=body), 400, "BAD_REQUEST")

    unchanged(partner, check)


@pytest.mark.parametrize("token", [None, "", "wrong", "test-admin-token-012345678"])
def test_internal_api_needs_the_admin_token(partner, anonymous, token):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    def check():
        for path, body in (("/internal/v1/partners", {"name": "x"}),
                           ("/internal/v1/events", {"partnerId": partner.partner_id,
                                                    "type": "t", "reference": "r",
                                                    "payload": {}})):
            response = anonymous.post(path, json=body, headers=headers)
            t.assert_error(response, 401, "UNAUTHORIZED")

    unchanged(partner, check)


@pytest.mark.parametrize("spelling", [str.lower, str.upper])
def test_internal_publish_and_create_work(admin, receiver, worker, spelling):
    created = admin.post("/internal/v1/partners",
                         json={"name": "Via API", "webhookUrl": receiver.url("/hook")})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "apiKey", "signingSecret"}
    # A partner id in upper case is the same partner (RFC 9562: UUIDs in either case).
    published = admin.post("/internal/v1/events", json={
        "partnerId": spelling(body["id"]), "type": "transaction.paid", "reference": "TXN-9",
        "payload": {"amount": 5}})
    assert published.status_code == 201, published.text
    [got] = receiver.wait_for(1, "/hook")
    assert got.headers["webhook-id"] == published.json()["notificationId"]
