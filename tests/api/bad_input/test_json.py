"""Bodies that are not the JSON expected: malformed, wrong types, unknown fields, NUL
characters, lone surrogates, numbers JSON cannot carry, a key twice, nesting too deep;
each a clear 400 in the error format, never a 500, nothing written (and what JSON does
allow, published as sent)."""

from __future__ import annotations

import json

import pytest

from deliverer.models import NotificationStatus
from tests.api import helpers as t
from tests.api.bad_input.helpers import BASE, JSON, ROTATE, SETTINGS, unchanged

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
