"""POST /endpoints under an Idempotency-Key: a create repeated after a lost answer gets
the endpoint the first one made, its secret included, instead of a 409 for its URL (an
endpoints try: the secret is shown once, so a lost answer cost a rotation)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from deliverer.db import session_scope
from deliverer.models import Endpoint, utcnow
from deliverer.partners.create_keys import KEY_HOURS
from tests.api import helpers as t
from tests.api.endpoints.helpers import ENDPOINTS, endpoint_rows
from tests.support.race import race

BODY = {"url": "http://127.0.0.1:9/billing", "description": "Billing",
        "eventTypes": ["invoice.*"], "rateLimit": 2}


def _post(partner, key: str | None, body: dict | None = None):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return partner.api.post(ENDPOINTS, json=body or BODY, headers=headers)


def test_a_repeated_create_answers_with_the_first_endpoint_and_its_secret(make_partner):
    partner = make_partner()
    first = _post(partner, "create-billing-1")
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = _post(partner, "create-billing-1")
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the same id and the same secret
    assert endpoint_rows(partner.partner_id) == 1


def test_a_key_is_one_create_of_one_partner(make_partner):
    partner = make_partner()
    assert _post(partner, "k").status_code == 201
    t.assert_error(_post(partner, "k", {**BODY, "description": "Other"}), 409, "CONFLICT",
                   "This idempotency key was already used for a different endpoint")
    t.assert_error(_post(partner, "k", {**BODY, "url": "http://127.0.0.1:9/other"}), 409,
                   "CONFLICT", "This idempotency key was already used for a different endpoint")
    # Without a key, or under another, the URL is taken as before.
    taken = _post(partner, None)
    t.assert_error(taken, 409, "CONFLICT")
    assert "already has this URL" in taken.json()["message"]
    # Another partner's key of the same name is its own.
    other = make_partner(name="Other")
    assert _post(other, "k").status_code == 201
    assert endpoint_rows(partner.partner_id) == endpoint_rows(other.partner_id) == 1


def test_a_patch_since_does_not_make_the_repeat_another_create(make_partner):
    partner = make_partner()
    first = _post(partner, "k").json()
    assert partner.api.patch(f"{ENDPOINTS}/{first['id']}",
                             json={"description": "Renamed"}).status_code == 200
    again = _post(partner, "k")
    assert again.status_code == 201 and again.json()["id"] == first["id"]
    assert again.json()["description"] == "Renamed"  # the endpoint as it is now


def test_a_deleted_endpoints_key_is_spent_and_an_old_key_forgotten(make_partner):
    partner = make_partner()
    first = _post(partner, "k").json()
    assert partner.api.delete(f"{ENDPOINTS}/{first['id']}").status_code == 200
    t.assert_error(_post(partner, "k"), 409, "CONFLICT",
                   "This idempotency key was already used for an endpoint that has since "
                   "been deleted")
    second = _post(partner, "k2").json()
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.public_id == second["id"]).values(
            created_at=utcnow() - timedelta(hours=KEY_HOURS, minutes=1)))
        session.commit()
    # Past the key's hours, the create is a new one: its URL is taken.
    late = _post(partner, "k2")
    t.assert_error(late, 409, "CONFLICT")
    assert "already has this URL" in late.json()["message"]


def test_a_row_taken_over_as_the_webhook_url_is_not_the_keys_endpoint(make_partner):
    """A review: the key stayed on a deleted endpoint's row that became the default
    endpoint (the webhook URL), and the repeat answered with it, secret None: a 500."""
    partner = make_partner()
    first = _post(partner, "k").json()
    assert partner.api.delete(f"{ENDPOINTS}/{first['id']}").status_code == 200
    moved = partner.api.put("/api/partner/v2/webhook-settings", json={"url": BODY["url"]})
    assert moved.status_code == 200, moved.text
    # Not replayed (the row's key went with its takeover): its URL is the webhook URL's.
    again = _post(partner, "k")
    t.assert_error(again, 409, "CONFLICT")
    assert "already has this URL" in again.json()["message"]


def test_the_repeat_of_the_last_create_under_the_limit_is_not_refused(make_partner,
                                                                        api_settings):
    partner = make_partner()
    with api_settings(max_endpoints_per_partner=1):
        first = _post(partner, "k")
        assert first.status_code == 201
        again = _post(partner, "k")
        assert again.status_code == 201 and again.json() == first.json()


def test_parallel_repeats_make_one_endpoint(make_partner):
    partner = make_partner()
    responses = race([(lambda: _post(partner, "same-key")) for _ in range(8)])
    assert t.statuses(responses) == {201: 8}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.json()["signingSecret"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    assert endpoint_rows(partner.partner_id) == 1


def test_a_bad_key_is_a_400_and_nothing_is_written(make_partner):
    partner = make_partner()
    before = t.row_counts()
    for key in ("", "x" * 256):
        t.assert_error(_post(partner, key), 400, "BAD_REQUEST")
    assert t.row_counts() == before
