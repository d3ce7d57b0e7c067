"""Who may touch an endpoint and how many there may be: the configured maximum, held under
parallel creates; another partner's endpoint is 404; the API key is needed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.models import Endpoint
from tests.api import helpers as t
from tests.api.endpoints.helpers import ENDPOINTS, EVENT_TYPES, SETTINGS, create, endpoint_rows
from tests.support.race import race


def test_at_most_the_configured_number_of_endpoints(make_partner, api_settings):
    partner = make_partner("http://127.0.0.1:9/default")
    with api_settings(max_endpoints_per_partner=3):
        create(partner, "http://127.0.0.1:9/1")
        create(partner, "http://127.0.0.1:9/2")
        body = t.assert_error(partner.api.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/3"}),
                              409, "CONFLICT")
        assert body["message"] == "A partner may have at most 3 endpoints"
        assert endpoint_rows(partner.partner_id) == 3
        # Moving the default endpoint adds none; a default made beside registered ones
        # (the old one deleted, its place taken) would be a fourth (a black-box try).
        moved = partner.api.put(SETTINGS, json={"url": "http://127.0.0.1:9/moved"})
        assert moved.status_code == 200, moved.text
        [default] = [e for e in partner.api.get(ENDPOINTS).json()["data"] if e["isDefault"]]
        assert partner.api.delete(f"{ENDPOINTS}/{default['id']}").status_code == 200
        create(partner, "http://127.0.0.1:9/3")
        t.assert_error(partner.api.put(SETTINGS, json={"url": "http://127.0.0.1:9/new"}),
                       409, "CONFLICT", "A partner may have at most 3 endpoints")
        assert endpoint_rows(partner.partner_id) == 3
        assert partner.api.get(SETTINGS).json()["url"] is None


def test_the_limit_holds_under_parallel_creates(make_partner, api_settings):
    partner = make_partner()
    other = make_partner(name="Other")
    with api_settings(max_endpoints_per_partner=5):
        responses = race([
            (lambda i=i: partner.api.post(ENDPOINTS, json={"url": f"http://127.0.0.1:9/{i}"}))
            for i in range(12)] + [
            (lambda i=i: other.api.post(ENDPOINTS, json={"url": f"http://127.0.0.1:9/{i}"}))
            for i in range(3)])
    mine = t.statuses(responses[:12])
    assert mine == {201: 5, 409: 7}, mine
    assert t.statuses(responses[12:]) == {201: 3}
    for response in responses:
        if response.status_code == 409:
            t.assert_error(response, 409, "CONFLICT")
    assert endpoint_rows(partner.partner_id) == 5
    assert endpoint_rows(other.partner_id) == 3


@pytest.mark.parametrize("method,suffix,body", [
    ("GET", "", None),
    ("PATCH", "", {"description": "mine now"}),
    ("DELETE", "", None),
    ("POST", "/rotate-secret", {"overlapSeconds": 0}),
    ("POST", "/test", None),
    ("POST", "/recover", {"since": "2026-01-01T00:00:00Z"}),
])
def test_another_partners_endpoint_is_404(make_partner, method, suffix, body):
    owner = make_partner()
    theirs = create(owner, "http://127.0.0.1:9/theirs")
    intruder = make_partner(name="Intruder")
    before = t.row_counts()
    for endpoint_id in (theirs["id"], "ep_" + "0" * 24, "nope", "x" * 300):
        response = intruder.api.request(method, f"{ENDPOINTS}/{endpoint_id}{suffix}",
                                        json=body)
        t.assert_error(response, 404, "NOT_FOUND")
    counts = t.row_counts()
    # Refused test and recover requests are on the intruder's audit trail, nothing else.
    audited = counts.pop("partner_requests") - before.pop("partner_requests")
    assert counts == before
    assert audited == (4 if suffix in ("/test", "/recover") else 0)
    with session_scope() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.public_id == theirs["id"]))
        assert (row.description, row.deleted_at, row.registered) == (None, None, True)


def test_endpoints_need_the_api_key(make_partner, anonymous):
    make_partner()
    for method, path in (("GET", ENDPOINTS), ("POST", ENDPOINTS), ("GET", EVENT_TYPES),
                         ("PATCH", f"{ENDPOINTS}/ep_x"), ("POST", f"{ENDPOINTS}/ep_x/test")):
        t.assert_error(anonymous.request(method, path, json={}), 401, "UNAUTHORIZED")
