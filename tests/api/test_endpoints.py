"""/api/partner/v2/endpoints: create, list, read, change, delete, rotate, and the
event-type catalog; every bad input a clear 4xx in the error body, nothing written."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update

import deliverer
from deliverer.db import session_scope
from deliverer.models import Endpoint, NotificationStatus, utcnow
from deliverer.partners.catalog import ALL_AND_SOME, DEFAULT_CATALOG
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support.race import race

ENDPOINTS = "/api/partner/v2/endpoints"
EVENT_TYPES = "/api/partner/v2/event-types"
SETTINGS = "/api/partner/v2/webhook-settings"
FIELDS = {"id", "url", "description", "eventTypes", "enabled", "rateLimit", "status",
          "disabledReason", "failingSince", "isDefault", "createdAt"}


def endpoint_rows(partner_id: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Endpoint).where(
            Endpoint.partner_id == partner_id, Endpoint.registered.is_(True))) or 0)


def create(partner, url: str, **fields):
    response = partner.api.post(ENDPOINTS, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()


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


def test_alerts_name_their_endpoint_by_its_public_id(make_partner):
    """GET /webhook-alerts gave the endpoint's row id (4, 35), which no route takes."""
    from deliverer.alerts import service as alerts
    from deliverer.models import utcnow

    partner = make_partner("http://127.0.0.1:9/default")
    billing = create(partner, "http://127.0.0.1:9/billing")
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.public_id == billing["id"]))
        alerts.raise_alert(session, endpoint, alerts.KIND_DISABLED, "answered 410 Gone",
                           notification_id=None, now=utcnow())
    listed = partner.api.get("/api/partner/v2/webhook-alerts")
    assert listed.status_code == 200, listed.text
    [alert] = listed.json()["data"]
    assert (alert["endpointId"], alert["kind"]) == (billing["id"], "endpoint_disabled")
    assert partner.api.get(f"{ENDPOINTS}/{alert['endpointId']}").status_code == 200


def test_alerts_are_paged_newest_first(make_partner):
    """At most 200 a page, and there was no next page: older alerts could not be read."""
    from datetime import timedelta

    from deliverer.alerts import service as alerts
    from deliverer.models import utcnow

    partner = make_partner("http://127.0.0.1:9/default")
    billing = create(partner, "http://127.0.0.1:9/billing")
    start = utcnow()
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.public_id == billing["id"]))
        for n in range(5):  # two of them at the same instant: the id breaks the tie
            alerts.raise_alert(session, endpoint, alerts.KIND_DISABLED, f"alert {n}",
                               notification_id=None,
                               now=start + timedelta(seconds=min(n, 3)))
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = partner.api.get("/api/partner/v2/webhook-alerts", params=params)
        assert page.status_code == 200, page.text
        seen += [a["message"] for a in page.json()["data"]]
        cursor, pages = page.json()["nextCursor"], pages + 1
        if cursor is None:
            break
    assert seen == ["alert 4", "alert 3", "alert 2", "alert 1", "alert 0"] and pages == 3
    t.assert_error(partner.api.get("/api/partner/v2/webhook-alerts",
                                   params={"cursor": "garbage"}), 400, "BAD_REQUEST")
