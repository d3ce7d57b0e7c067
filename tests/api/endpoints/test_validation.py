"""The event-type catalog, and every bad input to /api/partner/v2/endpoints a clear 400 in
the error body with nothing written: unknown event types, bad creates and patches,
private addresses unless allowed."""

from __future__ import annotations

import pytest

from deliverer.partners.catalog import ALL_AND_SOME, DEFAULT_CATALOG
from tests.api import helpers as t
from tests.api.endpoints.helpers import ENDPOINTS, EVENT_TYPES, create, endpoint_rows


def test_event_type_catalog(make_partner):
    partner = make_partner()
    response = partner.api.get(EVENT_TYPES)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [e["name"] for e in data] == [e.name for e in DEFAULT_CATALOG]
    paid = next(e for e in data if e["name"] == "transaction.paid")
    assert paid["description"] and paid["schema"]["type"] == "object"
    assert "transaction_id" in paid["schema"]["properties"]


def test_unknown_event_type_is_400_listing_the_valid_ones(make_partner):
    partner = make_partner()
    before = t.row_counts()
    response = partner.api.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/a",
                                                 "eventTypes": ["invoice.*", "order.shipped"]})
    body = t.assert_error(response, 400, "BAD_REQUEST")
    assert "order.shipped" in body["message"]
    assert all(e.name in body["message"] for e in DEFAULT_CATALOG)
    assert t.row_counts() == before and endpoint_rows(partner.partner_id) == 0
    # A prefix that matches nothing in the catalog is unknown too.
    t.assert_error(partner.api.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/a",
                                                     "eventTypes": ["refund.*"]}), 400)
    ok = create(partner, "http://127.0.0.1:9/a")
    response = partner.api.patch(f"{ENDPOINTS}/{ok['id']}", json={"eventTypes": ["nope"],
                                                                  "description": "x"})
    t.assert_error(response, 400, "BAD_REQUEST")
    assert partner.api.get(f"{ENDPOINTS}/{ok['id']}").json()["description"] is None


def test_every_event_beside_some_types_is_400(make_partner):
    # The portal refuses All events ticked beside some types; the API said yes to
    # ["*", "x"], which takes everything while reading as a choice (a review).
    partner = make_partner()
    before = t.row_counts()
    body = t.assert_error(partner.api.post(ENDPOINTS, json={
        "url": "http://127.0.0.1:9/a", "eventTypes": ["*", "invoice.settled"]}), 400,
        "BAD_REQUEST")
    assert body["message"] == ALL_AND_SOME
    assert t.row_counts() == before
    ok = create(partner, "http://127.0.0.1:9/a", eventTypes=["*", "*"])
    assert ok["eventTypes"] == ["*"]
    t.assert_error(partner.api.patch(f"{ENDPOINTS}/{ok['id']}", json={
        "eventTypes": ["invoice.*", "*"]}), 400, "BAD_REQUEST")
    assert partner.api.get(f"{ENDPOINTS}/{ok['id']}").json()["eventTypes"] == ["*"]


@pytest.mark.parametrize("body", [
    {"url": "http://127.0.0.1:9/a", "rateLimit": 0},
    {"url": "http://127.0.0.1:9/a", "rateLimit": -1},
    {"url": "http://127.0.0.1:9/a", "rateLimit": "fast"},
    {"url": "http://127.0.0.1:9/a", "rateLimit": "5"},  # a JSON number, as enabled's bool
    {"url": "http://127.0.0.1:9/a", "rateLimit": True},
    {"url": "http://127.0.0.1:9/a", "rateLimit": 1e9},
    {"url": "http://127.0.0.1:9/a", "eventTypes": []},
    {"url": "http://127.0.0.1:9/a", "eventTypes": "invoice.*"},
    {"url": "http://127.0.0.1:9/a", "eventTypes": [5]},
    {"url": "http://127.0.0.1:9/a", "enabled": "maybe"},
    {"url": "http://127.0.0.1:9/a", "enabled": "on"},
    {"url": "http://127.0.0.1:9/a", "description": 5},
    {"url": "http://127.0.0.1:9/a", "id": "ep_mine"},
    {"url": "http://127.0.0.1:9/a", "signingSecret": "whsec_x"},
    {"url": "ftp://127.0.0.1/a"},
    {"url": 5},
    {"url": None},
    {},
    [],
    {"url": "http://127.0.0.1:9/a", "eventTypes": ["x" * 101]},
])
def test_bad_create_is_400_and_writes_nothing(make_partner, body):
    partner = make_partner()
    before = t.row_counts()
    t.assert_error(partner.api.post(ENDPOINTS, json=body), 400, "BAD_REQUEST")
    assert t.row_counts() == before and endpoint_rows(partner.partner_id) == 0


@pytest.mark.parametrize("body", [
    {"rateLimit": 0}, {"rateLimit": -0.5}, {"url": None}, {"enabled": None},
    {"eventTypes": None}, {"status": "ACTIVE"}, {"url": "not a url"},
    {"enabled": False, "color": "red"},
])
def test_bad_patch_is_400_and_changes_nothing(make_partner, body):
    partner = make_partner()
    created = create(partner, "http://127.0.0.1:9/a", rateLimit=3)
    del created["signingSecret"]
    t.assert_error(partner.api.patch(f"{ENDPOINTS}/{created['id']}", json=body), 400)
    assert partner.api.get(f"{ENDPOINTS}/{created['id']}").json() == created


def test_private_addresses_are_refused_unless_allowed(make_partner, api_settings):
    partner = make_partner()
    created = create(partner, "http://127.0.0.1:9/a")
    with api_settings(allow_private_urls=False):
        for url in ("http://10.1.2.3/hook", "http://169.254.169.254/latest",
                    "http://[::1]/hook", "http://localhost/hook"):
            t.assert_error(partner.api.post(ENDPOINTS, json={"url": url}), 400,
                           "BAD_REQUEST")
            t.assert_error(partner.api.patch(f"{ENDPOINTS}/{created['id']}",
                                             json={"url": url}), 400, "BAD_REQUEST")
        assert endpoint_rows(partner.partner_id) == 1
        assert partner.api.get(f"{ENDPOINTS}/{created['id']}").json()["url"] == \
            "http://127.0.0.1:9/a"
        ok = partner.api.post(ENDPOINTS, json={"url": "https://93.184.216.34/hooks"})
        assert ok.status_code == 201, ok.text
