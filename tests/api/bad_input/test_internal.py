"""The internal API's bad input: a bad publish or partner creation is a 400, the admin
token is needed, and the good ones work whatever the spelling of its header."""

from __future__ import annotations

import json

import pytest

from tests.api import helpers as t
from tests.api.bad_input.helpers import unchanged


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
