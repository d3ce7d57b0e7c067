"""/api/partner/v2/endpoints: create, list, read, change, delete and rotate, one URL one
endpoint, and the default endpoint kept in step with the webhook settings."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

import deliverer
from deliverer.db import session_scope
from deliverer.models import Endpoint, NotificationStatus, utcnow
from tests.api import helpers as t
from tests.api.endpoints.helpers import ENDPOINTS, FIELDS, SETTINGS, create, endpoint_rows
from tests.support import helpers as h
from tests.support.race import race


def test_create_shows_the_secret_once_and_the_endpoint_is_listed(make_partner):
    partner = make_partner("http://127.0.0.1:9/default")
    body = create(partner, "http://127.0.0.1:9/billing", description="Billing",
                  eventTypes=["invoice.*"], rateLimit=2.5)
    assert set(body) == FIELDS | {"signingSecret"}
    assert body["id"].startswith("ep_") and len(body["id"]) == 27
    assert (body["url"], body["description"], body["eventTypes"], body["enabled"],
            body["rateLimit"], body["status"], body["failingSince"], body["isDefault"]) == (
        "http://127.0.0.1:9/billing", "Billing", ["invoice.*"], True, 2.5, "ACTIVE", None,
        False)
    assert body["signingSecret"].startswith("whsec_")
    assert body["signingSecret"] != partner.signing_secret
    datetime.fromisoformat(body["createdAt"].replace("Z", "+00:00"))

    one = partner.api.get(f"{ENDPOINTS}/{body['id']}")
    assert one.status_code == 200, one.text
    assert set(one.json()) == FIELDS  # never the secret again
    listed = partner.api.get(ENDPOINTS).json()["data"]
    # The webhook-settings URL is the default endpoint, subscribed to everything.
    assert [(e["url"], e["eventTypes"], e["isDefault"]) for e in listed] == [
        ("http://127.0.0.1:9/default", ["*"], True),
        ("http://127.0.0.1:9/billing", ["invoice.*"], False)]
    assert all("signingSecret" not in e for e in listed)


def test_defaults_disabled_creation_and_patch(make_partner):
    partner = make_partner()
    body = create(partner, "http://127.0.0.1:9/a")
    assert (body["eventTypes"], body["rateLimit"], body["description"]) == (["*"], None, None)
    off = create(partner, "http://127.0.0.1:9/b", enabled=False)
    assert (off["enabled"], off["status"], off["disabledReason"]) == (
        False, "DISABLED", "Disabled by the merchant")

    path = f"{ENDPOINTS}/{body['id']}"
    response = partner.api.patch(path, json={
        "url": "http://127.0.0.1:9/a2", "description": "orders", "rateLimit": 5,
        "eventTypes": ["transaction.paid", "transaction.*"], "enabled": False})
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["url"], changed["description"], changed["rateLimit"],
            changed["eventTypes"], changed["enabled"], changed["status"]) == (
        "http://127.0.0.1:9/a2", "orders", 5.0, ["transaction.paid", "transaction.*"],
        False, "DISABLED")
    # A partial change changes only what it names; null removes the limit.
    response = partner.api.patch(path, json={"enabled": True, "rateLimit": None})
    assert (response.json()["enabled"], response.json()["rateLimit"],
            response.json()["description"]) == (True, None, "orders")
    assert partner.api.patch(path, json={}).json() == response.json()


def test_delete_stops_what_the_endpoint_holds(make_partner):
    partner = make_partner()
    body = create(partner, "http://127.0.0.1:9/gone")
    held = h.insert_notification(partner.partner_id, "http://127.0.0.1:9/gone",
                                 status=NotificationStatus.FAILED)
    t.set_notification(held, held=True)
    response = partner.api.delete(f"{ENDPOINTS}/{body['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": body["id"], "deleted": True, "notSent": 1}
    row = h.notification(held)
    assert row.status == NotificationStatus.NOT_SENT
    assert row.latest_error_payload["message"] == "The endpoint was deleted"
    t.assert_error(partner.api.get(f"{ENDPOINTS}/{body['id']}"), 404, "NOT_FOUND",
                   "Endpoint not found")
    t.assert_error(partner.api.delete(f"{ENDPOINTS}/{body['id']}"), 404)
    assert partner.api.get(ENDPOINTS).json()["data"] == []


def test_an_endpoint_created_at_a_deleted_ones_url_is_born_healthy(make_partner):
    """It took over the deleted one's row with its failures: FAILING at birth, and
    auto-disabled within a minute for 'Failed continuously for 5 days' (a black-box try)."""
    partner = make_partner()
    url = "http://127.0.0.1:9/again"
    first = create(partner, url)
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.partner_id == partner.partner_id,
                                               Endpoint.url == url)
                        .values(failing_since=utcnow() - timedelta(days=6),
                                consecutive_failures=40, alerted_at=utcnow(),
                                retry_after_until=utcnow() + timedelta(hours=1)))
    assert partner.api.get(f"{ENDPOINTS}/{first['id']}").json()["status"] == "FAILING"
    assert partner.api.delete(f"{ENDPOINTS}/{first['id']}").status_code == 200
    again = create(partner, url)
    assert (again["status"], again["failingSince"]) == ("ACTIVE", None)
    with session_scope() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.partner_id == partner.partner_id,
                                                    Endpoint.url == url))
        assert (row.consecutive_failures, row.alerted_at, row.retry_after_until) == (
            0, None, None)


def test_deleting_the_default_endpoint_clears_the_webhook_url(make_partner):
    partner = make_partner("http://127.0.0.1:9/default")
    [default] = partner.api.get(ENDPOINTS).json()["data"]
    assert partner.api.delete(f"{ENDPOINTS}/{default['id']}").status_code == 200
    assert t.settings_row(partner.partner_id).url is None


def test_moving_the_default_endpoint_moves_the_webhook_url(make_partner):
    partner = make_partner("http://127.0.0.1:9/default")
    [default] = partner.api.get(ENDPOINTS).json()["data"]
    response = partner.api.patch(f"{ENDPOINTS}/{default['id']}",
                                 json={"url": "http://127.0.0.1:9/moved",
                                       "eventTypes": ["transaction.*"]})
    assert response.status_code == 200, response.text
    assert t.settings_row(partner.partner_id).url == "http://127.0.0.1:9/moved"
    settings = partner.api.get("/api/partner/v2/webhook-settings").json()
    assert settings["url"] == "http://127.0.0.1:9/moved"
    [moved] = partner.api.get(ENDPOINTS).json()["data"]
    assert (moved["id"], moved["isDefault"], moved["eventTypes"]) == (
        default["id"], True, ["transaction.*"])


def test_answers_carrying_secrets_are_not_stored_by_caches(make_partner):
    # A browser or proxy kept the answers with a signing secret, an API key or a portal
    # link (the security try): every JSON answer says no-store.
    partner = make_partner()
    created = partner.api.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/a"})
    answers = [created, partner.api.get(SETTINGS),
               partner.api.post(f"{ENDPOINTS}/{created.json()['id']}/rotate-secret",
                                json={}),
               partner.api.post("/api/partner/v2/portal-sessions", json={}),
               partner.api.get(f"{ENDPOINTS}/ep_none")]
    assert [a.headers.get("Cache-Control") for a in answers] == ["no-store"] * 5, [
        a.status_code for a in answers]


def test_rotate_secret_with_an_overlap(make_partner):
    partner = make_partner()
    body = create(partner, "http://127.0.0.1:9/a")
    path = f"{ENDPOINTS}/{body['id']}/rotate-secret"
    rotated = partner.api.post(path, json={"overlapSeconds": 3600})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["signingSecret"] not in (body["signingSecret"], None)
    with session_scope() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.public_id == body["id"]))
        assert row.previous_secret == body["signingSecret"]
        assert row.signing_secret == rotated.json()["signingSecret"]
    # A second rotation during the overlap would drop the secret receivers still use.
    t.assert_error(partner.api.post(path, json={"overlapSeconds": 60}), 409, "CONFLICT")
    dropped = partner.api.post(path, json={"overlapSeconds": 0})
    assert dropped.status_code == 200, dropped.text
    t.assert_error(partner.api.post(path, json={"overlapSeconds": -1}), 400)


def test_rotating_the_default_endpoint_rotates_the_webhook_settings_secret(make_partner):
    partner = make_partner("http://127.0.0.1:9/default")
    [default] = partner.api.get(ENDPOINTS).json()["data"]
    rotated = partner.api.post(f"{ENDPOINTS}/{default['id']}/rotate-secret",
                               json={"overlapSeconds": 0})
    assert rotated.status_code == 200, rotated.text
    assert t.settings_row(partner.partner_id).signing_secret == rotated.json()["signingSecret"]


def test_one_url_is_one_endpoint(make_partner):
    partner = make_partner("http://127.0.0.1:9/default")
    t.assert_error(partner.api.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/default"}),
                   409, "CONFLICT")
    a = create(partner, "http://127.0.0.1:9/a")
    b = create(partner, "http://127.0.0.1:9/b")
    t.assert_error(partner.api.patch(f"{ENDPOINTS}/{a['id']}",
                                     json={"url": "http://127.0.0.1:9/b"}), 409, "CONFLICT",
                   f"Another endpoint of yours already has this URL: {b['id']}")
    # A create sent again (its answer lost) is told which endpoint it made.
    t.assert_error(partner.api.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/a"}), 409,
                   "CONFLICT", f"Another endpoint of yours already has this URL: {a['id']}")
    # Spellings of /a's receiver that are not /a (a fragment is never sent) are refused,
    # not registered beside it (a black-box try had three endpoints for one receiver).
    for spelling in ("http://127.0.0.1:9/a#dup", "http://127.0.0.1:9/a#",
                     "http://127.0.0.1:9/a?"):
        body = t.assert_error(partner.api.post(ENDPOINTS, json={"url": spelling}),
                              400, "BAD_REQUEST")
        assert "fragment" in body["message"]
        t.assert_error(partner.api.patch(f"{ENDPOINTS}/{a['id']}", json={"url": spelling}),
                       400, "BAD_REQUEST")
    assert endpoint_rows(partner.partner_id) == 3


def test_a_callback_url_keeps_its_spelling(make_partner):
    """The rule is for the URLs merchants register and save: producers' callback URLs
    are taken as they send them."""
    partner = make_partner("http://127.0.0.1:9/default")
    published = deliverer.publish_event(partner.partner_id, "transaction.paid", "TXN-1", {},
                                        callback_url="http://127.0.0.1:9/callback#order-1")
    assert h.notification(published.notification_id).url == (
        "http://127.0.0.1:9/callback#order-1")


def _default(partner) -> dict:
    [default] = [e for e in partner.api.get(ENDPOINTS).json()["data"] if e["isDefault"]]
    return default


def test_parallel_url_changes_wait_for_each_other(make_partner):
    """Two endpoints moved to one URL, that URL registered, the webhook URL saved and the
    default endpoint moved, all at once: each change waits for the one before it. They
    deadlocked (the settings row and an endpoint's row locked in opposite orders: 503),
    or both passed the URL check and the unique constraint answered 500."""
    partner = make_partner("http://127.0.0.1:9/default")
    first = create(partner, "http://127.0.0.1:9/first")["id"]
    second = create(partner, "http://127.0.0.1:9/second")["id"]
    for k in range(4):
        shared = f"http://127.0.0.1:9/shared-{k}"
        calls = [("PATCH", f"{ENDPOINTS}/{first}", {"url": shared}),
                 ("PATCH", f"{ENDPOINTS}/{second}", {"url": shared}),
                 ("POST", ENDPOINTS, {"url": shared}),
                 ("PUT", "/api/partner/v2/webhook-settings",
                  {"url": f"http://127.0.0.1:9/settings-{k}"}),
                 ("PATCH", f"{ENDPOINTS}/{_default(partner)['id']}",
                  {"url": f"http://127.0.0.1:9/moved-{k}"})]
        responses = race([(lambda c=call: partner.api.request(c[0], c[1], json=c[2]))
                          for call in calls])
        assert all(r.status_code < 500 for r in responses), [r.text for r in responses]
        claims = t.statuses(responses[:3])
        assert sum(n for status, n in claims.items() if status in (200, 201)) == 1, claims
        for response in responses[:3]:
            if response.status_code == 409:
                t.assert_error(response, 409, "CONFLICT")
        # The default moved by the PATCH, or left behind by the settings' save (then
        # no longer an endpoint of the merchant's: 404).
        assert responses[3].status_code == 200, responses[3].text
        assert responses[4].status_code in (200, 404), responses[4].text
        settings = partner.api.get("/api/partner/v2/webhook-settings").json()
        assert _default(partner)["url"] == settings["url"]
        created = [r.json()["id"] for r in responses[2:3] if r.status_code == 201]
        if created:
            assert partner.api.delete(f"{ENDPOINTS}/{created[0]}").status_code == 200
        for endpoint_id in (first, second):  # the one that moved frees the URL again
            partner.api.patch(f"{ENDPOINTS}/{endpoint_id}",
                              json={"url": f"http://127.0.0.1:9/{endpoint_id}-{k}"})
