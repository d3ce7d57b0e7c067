"""Seed 000's common errors (401 x3, 403), exactly, on every partner and compat endpoint."""

from __future__ import annotations

import pytest

from deliverer.db import session_scope
from deliverer.partners import keys
from deliverer.partners.service import rotate_key
from tests.api import helpers as t
from tests.support.live_server import ApiClient

NID = "8374f327-38bd-4b0b-b8a7-2524599eb903"  # seed 000's example id

# Every endpoint that takes a partner API key: (method, path, json body).
ENDPOINTS = [
    ("GET", "/api/partner/v2/webhook-notifications", None),
    ("GET", f"/api/partner/v2/webhook-notifications/{NID}", None),
    ("POST", f"/api/partner/v2/webhook-notifications/{NID}/retry", None),
    ("POST", f"/api/partner/v2/webhook-notifications/{NID}/ignore", None),
    ("POST", "/api/partner/v2/transactions/TXN-1/resend-webhook", None),
    ("GET", "/api/partner/v2/webhook-settings", None),
    ("PUT", "/api/partner/v2/webhook-settings", {"enabled": True}),
    ("POST", "/api/partner/v2/webhook-settings/rotate-secret", {}),
    ("POST", f"/api/webhooks/deliveries/{NID}/retry", None),
    ("GET", "/api/webhooks/deliveries?status=FAILED", None),
    ("POST", "/api/v1/merchant/transactions/TXN-1/resend-webhook", None),
    ("POST", "/invoices/resend-webhook/123", None),
]
IDS = [f"{m} {p.split('?')[0]}" for m, p, _ in ENDPOINTS]

GARBAGE_KEYS = [
    "abc",
    "sk_live_sua_chave_aqui",  # seed 001's example
    "dlv_",
    "dlv_" + "0" * 47,  # one character short
    "dlv_" + "0" * 49,  # one character long
    "dlv_" + "g" * 48,  # not hex
    "DLV_" + "a" * 48,
    "dlv_" + "A" * 48,  # upper-case hex is not our format
    "dlv_" + "a" * 24 + " " + "a" * 23,
]


def call(client: ApiClient, method: str, path: str, body: object, **headers: str):
    return client.request(method, path, json=body, headers=headers or None)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_missing_key(anonymous, method, path, body):
    before = t.row_counts()
    response = call(anonymous, method, path, body)
    t.assert_error(response, 401, "UNAUTHORIZED", t.MISSING)
    assert t.row_counts() == before


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_empty_key_is_missing(anonymous, method, path, body):
    response = call(anonymous, method, path, body, **{"X-Api-Key": ""})
    t.assert_error(response, 401, "UNAUTHORIZED", t.MISSING)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
def test_garbage_key_is_invalid_format(anonymous, method, path, body, auth):
    for garbage in GARBAGE_KEYS:
        response = call(anonymous.as_key(garbage, auth), method, path, body)
        t.assert_error(response, 401, "UNAUTHORIZED", t.BAD_FORMAT)


def test_non_bearer_authorization_is_invalid_format(anonymous):
    for value in ("Basic dXNlcjpwYXNz", "Token dlv_" + "a" * 48, "Bearer", "dlv_" + "a" * 48):
        response = anonymous.get("/api/partner/v2/webhook-notifications",
                                 headers={"Authorization": value})
        t.assert_error(response, 401, "UNAUTHORIZED", t.BAD_FORMAT)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
def test_unknown_well_formed_key_is_invalid(anonymous, make_partner, method, path, body, auth):
    make_partner()  # a partner exists, just not with this key
    unknown = keys.generate_key()
    assert keys.looks_like_key(unknown)
    before = t.row_counts()
    response = call(anonymous.as_key(unknown, auth), method, path, body)
    t.assert_error(response, 401, "UNAUTHORIZED", t.INVALID)
    assert t.row_counts() == before


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
def test_revoked_key_is_invalid_and_new_key_works(make_partner, anonymous, auth):
    partner = make_partner()
    old = anonymous.as_key(partner.api_key, auth)
    assert old.get("/api/partner/v2/webhook-settings").status_code == 200
    with session_scope() as session:
        new_key = rotate_key(session, partner.partner_id)
    for method, path, body in ENDPOINTS:
        t.assert_error(call(old, method, path, body), 401, "UNAUTHORIZED", t.INVALID)
    new = anonymous.as_key(new_key, auth)
    assert new.get("/api/partner/v2/webhook-settings").status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_inactive_partner_has_invalid_flow(make_partner, method, path, body):
    partner = make_partner()
    t.set_partner(partner.partner_id, active=False)
    before = t.row_counts()
    for client in (partner.api, partner.bearer):
        response = call(client, method, path, body)
        t.assert_error(response, 403, "INVALID_PARTNER_FLOW", t.INVALID_FLOW)
    assert t.row_counts() == before


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_polling_partner_has_invalid_flow(make_partner, method, path, body):
    partner = make_partner(flow="POLLING")
    before = t.row_counts()
    response = call(partner.api, method, path, body)
    t.assert_error(response, 403, "INVALID_PARTNER_FLOW", t.INVALID_FLOW)
    assert t.row_counts() == before


def test_both_header_styles_authenticate(make_partner):
    partner = make_partner()
    for client in (partner.api, partner.bearer):
        response = client.get("/api/partner/v2/webhook-settings")
        assert response.status_code == 200, response.text


def test_authentication_comes_before_validation(anonymous, make_partner):
    """401 and 403 are decided before the id, the query or the body is looked at."""
    t.assert_error(anonymous.get("/api/partner/v2/webhook-notifications/not-a-uuid"),
                   401, "UNAUTHORIZED", t.MISSING)
    t.assert_error(anonymous.get("/api/partner/v2/webhook-notifications?status=BOGUS"),
                   401, "UNAUTHORIZED", t.MISSING)
    t.assert_error(anonymous.put("/api/partner/v2/webhook-settings", data="{not json",
                                 headers={"Content-Type": "application/json"}),
                   401, "UNAUTHORIZED", t.MISSING)
    polling = make_partner(flow="POLLING")
    t.assert_error(polling.api.put("/api/partner/v2/webhook-settings", json={"url": 5}),
                   403, "INVALID_PARTNER_FLOW", t.INVALID_FLOW)


def test_admin_token_is_not_a_partner_key(admin):
    t.assert_error(admin.get("/api/partner/v2/webhook-notifications"),
                   401, "UNAUTHORIZED", t.BAD_FORMAT)


def test_partner_key_does_not_open_internal_api(make_partner):
    partner = make_partner()
    response = partner.bearer.post("/internal/v1/partners", json={"name": "x"})
    t.assert_error(response, 401, "UNAUTHORIZED")
    assert t.row_counts()["partners"] == 1
