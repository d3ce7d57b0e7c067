"""Endpoint settings in the portal, over HTTP: add one subscribed to one event type (its
secret shown once) and see only those events arrive there; edit, disable, enable,
rotate, test, delete; bad input answered in the form."""

from __future__ import annotations

import re
from html import unescape

from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

from deliverer.db import session_scope
from deliverer.models import Endpoint, NotificationStatus, PartnerRequest, utcnow
from deliverer.partners import registered
from deliverer.portal.sessions import SOURCE
from deliverer.scheduling.tasks import sweep_due
from tests.console.helpers import publish
from tests.support import helpers as h
from tests.support.page_client import csrf_of
from tests.support.receiver import Receiver, ok, status


def secret_in(html: str) -> str:
    match = re.search(r'<pre id="secret">(whsec_[^<]+)</pre>', html)
    assert match, "no secret on the page"
    return match.group(1)


def add(client, url: str, *types: str, **extra: str):
    return client.submit("/portal/endpoints/new", "/portal/endpoints/new",
                         {"url": url, "event_types": list(types), "enabled": "yes", **extra})


def public_id(url: str) -> str:
    with session_scope() as session:
        found = session.scalar(select(Endpoint.public_id).where(Endpoint.url == url))
        assert found is not None
        return found


def test_an_endpoint_added_for_one_type_receives_only_that_type(
        portal, merchant, worker, settings, receiver: Receiver):
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id)
    billing = receiver.program("/billing", [], ok())
    added = add(client, billing, "invoice.settled", description="Billing service")
    assert added.status_code == 200 and "Endpoint added" in added.text
    secret = secret_in(added.text)
    assert "shown only once" in added.text
    home = client.get("/portal/")
    assert billing in home.text and "Billing service" in home.text
    assert secret not in home.text and secret not in client.get(
        f"/portal/endpoints/{public_id(billing)}/settings").text

    invoice = publish(settings, shop.partner_id, "INV-1", event_type="invoice.settled")
    paid = publish(settings, shop.partner_id, "TXN-1", event_type="transaction.paid")
    h.wait_until(lambda: len(receiver.requests("/main")) == 2, message="both to /main")
    h.wait_until(lambda: receiver.requests("/billing"), message="invoice to /billing")
    [received] = receiver.requests("/billing")
    Webhook(secret).verify(received.body, received.headers)
    assert b'"reference":"INV-1"' in received.body
    assert invoice.notification_id and paid.notification_id
    # The receiver has the POSTs before their outcomes are recorded: wait for SENT.
    log = h.wait_until(
        lambda: (page if (page := client.get("/portal/events", params={"reference": "INV-1"})
                          ).text.count("badge s-SENT") == 2 else None),
        message="both of INV-1's notifications SENT in the event log")
    assert billing in log.text


def test_edit_disable_enable_rotate_test_and_delete(portal, merchant, receiver: Receiver,
                                                   settings, worker):
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id)
    url = receiver.program("/orders", [], ok())
    first_secret = secret_in(add(client, url, "transaction.*").text)
    ref = public_id(url)
    path = f"/portal/endpoints/{ref}/settings"

    saved = client.submit(path, path, {"url": url, "description": "Orders",
                                       "event_types": ["transaction.paid", "invoice.settled"],
                                       "rate_limit": "5"})
    assert "Settings saved." in saved.text
    with session_scope() as session:
        row = session.scalar(select(Endpoint).where(Endpoint.public_id == ref))
        assert row is not None
        assert (row.description, row.event_types, row.rate_limit) == (
            "Orders", ["transaction.paid", "invoice.settled"], 5.0)

    disabled = client.submit(path, f"/portal/endpoints/{ref}/enabled", {"enabled": "no"})
    assert "Endpoint disabled" in disabled.text and 'id="enable"' in disabled.text
    # Refused, in the portal's terms: it was sent nothing, and the page told the
    # merchant to PATCH the endpoint through the API (a black-box try).
    untested = client.submit(path, f"/portal/endpoints/{ref}/test")
    assert (f"Test event refused: Webhook endpoint {ref} is disabled (Disabled by the "
            "merchant): enable it (press Enable in the endpoint&#39;s settings), then send a "
            "test") in untested.text, untested.text
    assert "/api/" not in untested.text.split('role="status"')[1].split("</div>")[0]
    enabled = client.submit(path, f"/portal/endpoints/{ref}/enabled", {"enabled": "yes"})
    assert "Endpoint enabled" in enabled.text and 'id="disable"' in enabled.text

    rotated = client.submit(path, f"/portal/endpoints/{ref}/rotate-secret",
                            {"overlap_seconds": "0"})
    assert "Secret rotated" in rotated.text and secret_in(rotated.text) != first_secret

    tested = client.submit(path, f"/portal/endpoints/{ref}/test")
    assert "Test event delivered" in tested.text and "/portal/notifications/" in tested.url
    assert "webhook.test" in tested.text and ">SENT<" in tested.text
    [test] = receiver.requests("/orders")
    Webhook(secret_in(rotated.text)).verify(test.body, test.headers)
    assert b'"type":"webhook.test"' in test.body

    confirm = client.get(f"/portal/endpoints/{ref}/delete")
    assert "Delete this endpoint?" in confirm.text
    deleted = client.post(f"/portal/endpoints/{ref}/delete",
                          {"csrf_token": csrf_of(confirm.text), "confirm": "yes"})
    assert "deleted" in deleted.text and url not in deleted.text.split("</h1>")[1]
    assert client.get(path).status_code == 404
    with session_scope() as session:  # on the audit trail, as the merchant's own
        trail = session.execute(select(PartnerRequest.kind, PartnerRequest.source,
                                       PartnerRequest.reference, PartnerRequest.api_key_id)
                                .order_by(PartnerRequest.id)).all()
    assert trail == [(kind, SOURCE, ref, None) for kind in (
        "endpoint_add", "endpoint_edit", "endpoint_disable", "endpoint_test",
        "endpoint_enable", "secret_rotate", "endpoint_test", "endpoint_delete")]


def test_bad_input_is_answered_in_the_form(portal, merchant, receiver: Receiver):
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id)
    cases = [  # a 400, but a URL another endpoint has: a 409, as the API answers
        (("not a url", "*"), {}, "URL: Not a valid URL."),
        ((receiver.url("/x"), "no.such.type"), {}, "Unknown event types: no.such.type"),
        ((receiver.url("/x"),), {}, "Event types: tick at least one, or All events"),
        # Not 'tick at least one' for 500 ticked (a black-box try's forged form).
        ((receiver.url("/x"), *["invoice.settled"] * 500), {}, "at most 100 event types"),
        # Both: which was meant? (All events came ticked, and one type ticked beside it
        # took every event: a black-box try.)
        ((receiver.url("/x"), "*", "invoice.settled"), {},
         "Untick All events to receive only the types you ticked"),
        ((receiver.url("/x"), "*"), {"rate_limit": "-1"}, "must be between 0.001 and 10000"),
        # The API's range (a black-box try saved 1e308 in the portal).
        ((receiver.url("/x"), "*"), {"rate_limit": "1e308"}, "must be between 0.001 and 10000"),
        ((receiver.url("/main"), "*"), {}, "Another endpoint of yours already has this URL"),
        # The API's guard, for forms too (a black-box try stored both).
        ((receiver.url("/x") + "\x00", "*"), {}, "NUL characters are not allowed"),
        ((receiver.url("/y"), "*"), {"description": "a\x00b"}, "NUL characters"),
    ]
    for (url, *types), extra, expected in cases:
        answer = add(client, url, *types, **extra)
        assert answer.status_code == (409 if "already has" in expected else 400), (url, types)
        assert expected in answer.text, (expected, answer.text[-1500:])
    with session_scope() as session:
        assert len(session.scalars(select(Endpoint)).all()) == 1


def test_read_only_sessions_see_settings_but_no_form(portal, merchant, receiver: Receiver):
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id, read_only=True)
    ref = public_id(receiver.url("/main"))
    page = client.get(f"/portal/endpoints/{ref}/settings")
    assert page.status_code == 200 and receiver.url("/main") in page.text
    assert 'id="endpoint-form"' not in page.text and 'id="rotate"' not in page.text
    assert 'id="add-endpoint"' not in client.get("/portal/").text
    refused = client.post(f"/portal/endpoints/{ref}/rotate-secret",
                          {"csrf_token": csrf_of(client.get("/portal/").text)})
    assert refused.status_code == 403


def test_recover_sends_a_periods_failed_webhooks_again(portal, merchant, worker, settings,
                                                      receiver: Receiver, override_settings):
    with override_settings(time_scale=1.0):  # FAILED stays FAILED meanwhile
        shop = merchant(receiver.program("/down", [], status(500)))
        published = [publish(settings, shop.partner_id, f"TXN-R{i}") for i in range(3)]
        for one in published:
            h.wait_until(lambda one=one: h.notification(one.notification_id).status
                         == NotificationStatus.FAILED, message="FAILED")
        client = portal(shop.partner_id)
        ref = public_id(receiver.url("/down"))
        path = f"/portal/endpoints/{ref}/settings"
        receiver.program("/down", [], ok())  # the outage is over
        today = utcnow().strftime("%Y-%m-%d")
        answer = client.submit(path, f"/portal/endpoints/{ref}/recover", {"since": today})
        assert "3 webhook(s) will be sent again, oldest first" in answer.text
        for one in published:  # the beat sweep hands them over as they fall due
            h.wait_until(lambda one=one: h.sent(one.notification_id), message="recovered",
                         on_poll=sweep_due, interval=0.1)
        refused = client.submit(path, f"/portal/endpoints/{ref}/recover",
                                {"since": today, "until": "2020-01-01"})
        assert "Nothing recovered: From: must not be later than To" in refused.text
    with session_scope() as session:
        trail = session.execute(select(PartnerRequest.kind, PartnerRequest.source,
                                       PartnerRequest.reference)).all()
    assert trail == [("recover", SOURCE, ref)]


def test_recover_ticked_sends_what_was_not_sent_while_disabled(
        portal, merchant, worker, settings, receiver: Receiver, override_settings):
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id)
    ref = public_id(receiver.url("/main"))
    path = f"/portal/endpoints/{ref}/settings"
    with session_scope() as session:  # what a 410 Gone does
        session.execute(update(Endpoint).where(Endpoint.public_id == ref).values(
            disabled_at=utcnow(), disabled_reason="The receiver answered 410 Gone"))
    missed = [publish(settings, shop.partner_id, f"TXN-D{i}").notification_id
              for i in range(2)]
    assert all(h.notification(n).status == NotificationStatus.NOT_SENT for n in missed)
    client.submit(path, f"/portal/endpoints/{ref}/enabled", {"enabled": "yes"})
    today = utcnow().strftime("%Y-%m-%d")
    unticked = client.submit(path, f"/portal/endpoints/{ref}/recover", {"since": today})
    assert "No webhook of this endpoint to recover in that period." in unticked.text
    ticked = client.submit(path, f"/portal/endpoints/{ref}/recover",
                           {"since": today, "include_not_sent": "1"})
    assert "2 webhook(s) will be sent again, oldest first" in ticked.text
    for nid in missed:
        h.wait_until(lambda nid=nid: h.sent(nid), message="recovered", on_poll=sweep_due,
                     interval=0.1)
    assert sorted(r.headers["webhook-id"] for r in receiver.requests("/main")) == sorted(missed)


def test_refusals_are_said_in_the_portals_terms(portal, merchant, receiver: Receiver):
    # The service words them for the API (PATCH enabled: true); the page names its button.
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id)
    ref = public_id(receiver.url("/main"))
    path = f"/portal/endpoints/{ref}/settings"
    client.submit(path, f"/portal/endpoints/{ref}/enabled", {"enabled": "no"})
    refused = client.submit(path, f"/portal/endpoints/{ref}/recover",
                            {"since": utcnow().strftime("%Y-%m-%d")})
    assert ("Nothing recovered: The endpoint is disabled: enable it first (Enable, in its "
            "settings, releases what it holds)") in refused.text
    assert "PATCH" not in refused.text


def test_a_page_loaded_before_the_endpoint_moved_changes_nothing(portal, merchant,
                                                                 receiver: Receiver):
    # The default endpoint moves in place when the webhook URL is saved (same id): a form
    # loaded before must not move it back, nor delete it at its new URL.
    shop = merchant(receiver.program("/old", [], ok()))
    client = portal(shop.partner_id)
    ref = public_id(receiver.url("/old"))
    path = f"/portal/endpoints/{ref}/settings"
    form = client.get(path).text
    confirm = client.get(f"/portal/endpoints/{ref}/delete").text
    moved = shop.api.put("/api/partner/v2/webhook-settings", json={"url": receiver.url("/new")})
    assert moved.status_code == 200, moved.text
    stale_save = client.post(path, {
        "csrf_token": csrf_of(form), "shown_url": receiver.url("/old"),
        "url": receiver.url("/old"), "description": "", "event_types": ["*"],
        "rate_limit": ""})
    assert stale_save.status_code == 409
    assert f"This endpoint's URL is now {receiver.url('/new')}" in unescape(stale_save.text)
    stale_delete = client.post(f"/portal/endpoints/{ref}/delete", {
        "csrf_token": csrf_of(confirm), "confirm": "yes", "shown_url": receiver.url("/old")})
    assert f"Not deleted: This endpoint's URL is now {receiver.url('/new')}" \
        in unescape(stale_delete.text)
    endpoint = shop.api.get(f"/api/partner/v2/endpoints/{ref}").json()
    assert endpoint["url"] == receiver.url("/new")
    # Loaded again, the forms act.
    deleted = client.post(f"/portal/endpoints/{ref}/delete", {
        "csrf_token": csrf_of(confirm), "confirm": "yes",
        "shown_url": receiver.url("/new")})
    assert "deleted;" in deleted.text
    assert shop.api.get(f"/api/partner/v2/endpoints/{ref}").status_code == 404


def test_a_prefix_subscription_is_shown_and_kept_when_other_settings_change(
        portal, merchant, settings, receiver: Receiver):
    shop = merchant(receiver.program("/main", [], ok()))
    with session_scope() as session:
        registered.create(session, settings, shop.partner_id, url=receiver.url("/tx"),
                          event_types=["transaction.*"])
    ref = public_id(receiver.url("/tx"))
    client = portal(shop.partner_id)
    page = client.get(f"/portal/endpoints/{ref}/settings")
    assert re.search(r'<input type="checkbox" name="event_types" value="transaction\.\*"'
                     r' id="pattern-1" checked>', page.text), page.text
    # The form as the browser sends it: the ticked boxes, a new description.
    saved = client.post(f"/portal/endpoints/{ref}/settings", {
        "csrf_token": csrf_of(page.text), "url": receiver.url("/tx"),
        "description": "Transactions", "event_types": ["transaction.*"], "rate_limit": ""})
    assert saved.status_code == 200 and "Settings saved." in saved.text, saved.text[-2000:]
    endpoint = shop.api.get(f"/api/partner/v2/endpoints/{ref}").json()
    assert (endpoint["eventTypes"], endpoint["description"]) == (
        ["transaction.*"], "Transactions")


def test_enable_or_disable_takes_nothing_else(portal, merchant, receiver: Receiver):
    shop = merchant(receiver.program("/main", [], ok()))
    ref = public_id(receiver.url("/main"))
    client = portal(shop.partner_id)
    for value in ("true", "YES", "maybe", ""):
        answer = client.submit(f"/portal/endpoints/{ref}/settings",
                               f"/portal/endpoints/{ref}/enabled", {"enabled": value})
        assert answer.status_code == 400 and "Nothing changed" in answer.text, value
    assert shop.api.get(f"/api/partner/v2/endpoints/{ref}").json()["enabled"] is True


def test_a_settings_form_from_another_window_does_not_undo_a_change(portal, merchant,
                                                                    receiver: Receiver):
    """Two windows on one endpoint's settings: the second save put back the event types
    and rate limit the first had just saved (only the URL was checked; the portal try)."""
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id)
    url = receiver.program("/orders", [], ok())
    add(client, url, "transaction.*")
    ref = public_id(url)
    path = f"/portal/endpoints/{ref}/settings"
    first_window, second_window = client.get(path).text, client.get(path).text
    tag = re.search(r'name="shown_tag" value="([0-9a-f]+)"', first_window)
    assert tag is not None
    fields = {"shown_url": url, "shown_tag": tag.group(1), "url": url, "description": ""}
    saved = client.post(path, {"csrf_token": csrf_of(first_window), **fields,
                               "event_types": ["transaction.failed"], "rate_limit": "5"})
    assert "Settings saved." in saved.text
    stale = client.post(path, {"csrf_token": csrf_of(second_window), **fields,
                               "event_types": ["transaction.*"], "rate_limit": "",
                               "description": "Orders"})
    assert stale.status_code == 409
    assert "settings changed after this page was loaded" in unescape(stale.text)
    # The form shows what is saved now, not the stale values, under a tag of its own.
    assert 'value="5"' in stale.text and "Orders" not in stale.text
    assert tag.group(1) not in stale.text
    endpoint = shop.api.get(f"/api/partner/v2/endpoints/{ref}").json()
    assert (endpoint["eventTypes"], endpoint["rateLimit"], endpoint["description"]) == (
        ["transaction.failed"], 5, None)
    # Saved from the page it answered with, the change goes through.
    again = client.post(path, {"csrf_token": csrf_of(stale.text), "shown_url": url,
                               "shown_tag": re.search(r'name="shown_tag" value="([0-9a-f]+)"',
                                                      stale.text).group(1),
                               "url": url, "description": "Orders",
                               "event_types": ["transaction.failed"], "rate_limit": "5"})
    assert "Settings saved." in again.text


def test_at_the_endpoint_limit_the_list_says_so_instead_of_offering_add(
        portal, merchant, settings, receiver: Receiver):
    # The Add link led to a form that could only answer with the limit (a black-box try).
    shop = merchant(receiver.program("/main", [], ok()))
    client = portal(shop.partner_id)
    assert 'id="add-endpoint"' in client.get("/portal/").text
    with session_scope() as session:
        for i in range(1, settings.max_endpoints_per_partner):
            registered.create(session, settings, shop.partner_id, url=receiver.url(f"/e{i}"))
    home = client.get("/portal/").text
    assert 'id="add-endpoint"' not in home
    assert (f"You have {settings.max_endpoints_per_partner} endpoints, the most you may "
            "have: delete one to add another.") in home
    with session_scope() as session:
        registered.delete(session, registered.get(session, shop.partner_id,
                                                  public_id(receiver.url("/e1"))))
    assert 'id="add-endpoint"' in client.get("/portal/").text
