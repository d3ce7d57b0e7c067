"""Getting into the portal: links from both APIs, single use, expiry, sign-out, the rate
limit, CSRF and read-only sessions."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.models import Partner, PortalSession, PortalSignIn, utcnow
from deliverer.partners.service import create_partner, rotate_key
from tests.portal.conftest import ADMIN_TOKEN
from tests.support import helpers as h
from tests.support.live_server import ApiClient, app_server
from tests.support.page_client import PortalClient, csrf_of, field_of
from tests.support.race import race
from tests.support.receiver import Receiver, ok


def test_a_link_from_the_partner_api_signs_in_once(portal_server, merchant, receiver):
    shop = merchant(receiver.program("/hooks", [], ok()))
    answer = shop.api.post("/api/partner/v2/portal-sessions", json={})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["url"].startswith(portal_server.url + "/portal/enter?token=")
    assert body["readOnly"] is False
    assert body["expiresAt"] <= body["sessionExpiresAt"]

    browser = PortalClient(portal_server.url)
    first = browser.get(body["url"].removeprefix(portal_server.url))
    # Opening the link spends nothing: a mail scanner fetching it leaves it usable.
    assert first.status_code == 200 and 'id="continue"' in first.text
    entered = browser.open_link(body["url"])
    assert entered.status_code == 200 and "Your webhook endpoints" in entered.text
    assert "/hooks" in entered.text  # the default endpoint
    cookie = next(c for c in browser.http.cookies if c.name == "deliverer_portal")
    assert cookie.path == "/portal/" and cookie.has_nonstandard_attr("HttpOnly")
    assert shop.partner.api_key not in entered.text

    # The same link again, from another browser: refused.
    again = PortalClient(portal_server.url).open_link(body["url"])
    assert again.status_code == 403 and "Link not valid" in again.text
    assert browser.get("/portal/").status_code == 200  # the first session is unaffected


def test_expired_and_unknown_links_are_refused(portal_server, admin, merchant):
    shop = merchant(None)
    url = admin.post(f"/internal/v1/partners/{shop.partner_id}/portal-sessions",
                     json={}).json()["url"]
    with session_scope() as session:
        session.execute(update(PortalSession).values(
            token_expires_at=utcnow() - timedelta(seconds=1)))
    assert PortalClient(portal_server.url).open_link(url).status_code == 403
    forged = url.split("token=")[0] + "token=" + "A" * 43
    assert PortalClient(portal_server.url).open_link(forged).status_code == 403
    with session_scope() as session:
        assert session.scalar(select(PortalSession.exchanged_at)) is None


def test_sessions_end_at_their_expiry(portal, merchant):
    shop = merchant(None)
    client = portal(shop.partner_id)
    with session_scope() as session:
        session.execute(update(PortalSession).values(expires_at=utcnow()))
    answer = client.get("/portal/")
    assert answer.status_code == 401 and "Signed out" in answer.text


def test_delete_signs_out_every_session_of_the_partner(portal, admin, merchant):
    shop, other = merchant(None), merchant(None, name="Other")
    first, second, bystander = portal(shop.partner_id), portal(shop.partner_id), \
        portal(other.partner_id)
    unused = admin.post(f"/internal/v1/partners/{shop.partner_id}/portal-sessions",
                        json={}).json()["url"]
    answer = shop.api.request("DELETE", "/api/partner/v2/portal-sessions")
    assert answer.status_code == 200 and answer.json() == {"signedOut": 3}
    assert first.get("/portal/").status_code == 401
    assert second.get("/portal/").status_code == 401
    assert PortalClient(first.base_url).open_link(unused).status_code == 403
    assert bystander.get("/portal/").status_code == 200
    gone = admin.request("DELETE", f"/internal/v1/partners/{other.partner_id}/portal-sessions")
    assert gone.status_code == 200 and gone.json() == {"signedOut": 1}
    assert bystander.get("/portal/").status_code == 401


def test_sign_out_ends_the_session(portal, merchant):
    shop = merchant(None)
    client = portal(shop.partner_id)
    answer = client.submit("/portal/", "/portal/logout")
    assert answer.status_code == 200 and "You are signed out" in answer.text
    # Back must not show the pages from the browser's cache (the portal try).
    assert answer.history[0].headers["Clear-Site-Data"] == '"cache"'
    assert client.get("/portal/").status_code == 401


def test_links_need_credentials_and_a_known_partner(admin, merchant, portal_server):
    shop = merchant(None)
    anonymous = admin.as_key(None)
    assert anonymous.post(f"/internal/v1/partners/{shop.partner_id}/portal-sessions",
                          json={}).status_code == 401
    assert shop.api.as_key(None).post("/api/partner/v2/portal-sessions",
                                      json={}).status_code == 401
    missing = admin.post("/internal/v1/partners/00000000-0000-0000-0000-000000000000/"
                         "portal-sessions", json={})
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    for read_only in ("maybe", "yes", 1):  # JSON's true and false only
        bad = admin.post(f"/internal/v1/partners/{shop.partner_id}/portal-sessions",
                         json={"readOnly": read_only})
        assert bad.status_code == 400, read_only


def _link_and_forgery(admin, partner_id: str) -> tuple[str, str]:
    """A portal link of the partner, and the same link with a made-up token."""
    url = admin.post(f"/internal/v1/partners/{partner_id}/portal-sessions",
                     json={}).json()["url"]
    return url, url.split("token=")[0] + "token=guess"


def test_opening_links_is_rate_limited_per_address(portal_server, admin, merchant):
    shop = merchant(None)
    limit = portal_server.settings.portal_sign_ins_per_minute
    url, forged = _link_and_forgery(admin, shop.partner_id)
    for _ in range(limit):
        assert PortalClient(portal_server.url).open_link(forged).status_code == 403
    # Even the right token is refused now, from this address.
    limited = PortalClient(portal_server.url).open_link(url)
    assert limited.status_code == 429 and "Too many sign-ins" in limited.text
    with session_scope() as session:
        assert session.scalar(select(PortalSession.exchanged_at)) is None
        assert len(session.scalars(select(PortalSignIn)).all()) == limit


def test_the_limit_holds_under_parallel_guesses(portal_server, admin, merchant):
    # Counted after each request's rollback, 26 of 50 parallel guesses got past a limit
    # of 10 (a black-box try): each opening is admitted, and committed, first.
    shop = merchant(None)
    limit = portal_server.settings.portal_sign_ins_per_minute
    _url, forged = _link_and_forgery(admin, shop.partner_id)
    clients = []
    for _ in range(4 * limit):
        client = PortalClient(portal_server.url)
        page = client.http.get(forged, timeout=30)
        clients.append((client, field_of(page.text, "check")))
    answers = race([lambda c=c, check=check: c.post(
        "/portal/enter", {"token": "guess", "check": check}).status_code
        for c, check in clients])
    assert sorted(answers) == [403] * limit + [429] * (3 * limit)
    with session_scope() as session:
        assert len(session.scalars(select(PortalSignIn)).all()) == limit


def test_forms_need_their_tokens(portal_server, portal, merchant):
    shop = merchant(None)
    client = portal(shop.partner_id)
    assert client.post("/portal/logout", {}).status_code == 400
    assert client.post("/portal/logout", {"csrf_token": "forged" * 8}).status_code == 400
    assert client.get("/portal/").status_code == 200  # still signed in
    # The Continue form needs the cookie the link's page set.
    url = client.base_url + "/portal/enter?token=x"
    page = PortalClient(portal_server.url).get(url.removeprefix(portal_server.url))
    stranger = PortalClient(portal_server.url)
    answer = stranger.post("/portal/enter", {"token": "x", "check": field_of(page.text,
                                                                            "check")})
    assert answer.status_code == 400


def test_read_only_sessions_see_no_buttons_and_cannot_post(portal, merchant, receiver: Receiver):
    shop = merchant(receiver.program("/hooks", [], ok()))
    client = portal(shop.partner_id, read_only=True)
    home = client.get("/portal/")
    assert 'id="read-only"' in home.text
    alerts = client.get("/portal/alerts")
    assert 'id="subscribe"' not in alerts.text
    answer = client.post("/portal/alerts/email", {"csrf_token": csrf_of(home.text),
                                                  "email": "ops@example.com"})
    assert answer.status_code == 403 and "Read-only session" in answer.text
    assert client.submit("/portal/", "/portal/logout").status_code == 200


def test_revoking_the_api_key_ends_the_sessions_it_asked_for(portal_server, portal, merchant):
    shop = merchant(None)
    url = shop.api.post("/api/partner/v2/portal-sessions", json={}).json()["url"]
    by_key = PortalClient(portal_server.url)
    assert by_key.open_link(url).status_code == 200
    by_admin = portal(shop.partner_id)
    with session_scope() as session:
        rotate_key(session, shop.partner_id)
    assert by_key.get("/portal/").status_code == 401
    assert by_admin.get("/portal/").status_code == 200


def test_signing_in_does_not_use_up_the_limit(portal_server, admin, merchant):
    shop = merchant(None)
    for _ in range(portal_server.settings.portal_sign_ins_per_minute + 2):
        url = admin.post(f"/internal/v1/partners/{shop.partner_id}/portal-sessions",
                         json={}).json()["url"]
        assert PortalClient(portal_server.url).open_link(url).status_code == 200


def test_no_portal_for_a_partner_sent_no_webhooks(admin, settings, portal, merchant):
    with session_scope() as session:
        polling = create_partner(session, settings, name="Poller", webhook_url=None,
                                 flow="POLLING")
    refused = admin.post(f"/internal/v1/partners/{polling.partner_id}/portal-sessions",
                         json={})
    assert refused.status_code == 403 and refused.json()["code"] == "INVALID_PARTNER_FLOW"
    # A partner that stops being sent webhooks (made inactive) is signed out.
    shop = merchant(None)
    client = portal(shop.partner_id)
    with session_scope() as session:
        session.execute(update(Partner).where(Partner.id == shop.partner_id)
                        .values(active=False))
    assert client.get("/portal/").status_code == 401


def test_behind_a_trusted_proxy_the_limit_is_each_clients(settings, celery_app):
    # Every request came from the proxy: one client's failed links locked every
    # merchant out, and cookies went without Secure (the security try).
    with app_server(settings, celery_app, admin_token=ADMIN_TOKEN,
                    trusted_proxies=1) as server:
        shop = h.new_partner(settings, None, name="Proxied Shop")
        admin = ApiClient(server.url, ADMIN_TOKEN, auth="bearer")
        url, forged = _link_and_forgery(admin, shop.partner_id)

        def client(address: str) -> PortalClient:
            made = PortalClient(server.url)
            made.http.headers["X-Forwarded-For"] = address
            return made

        for _ in range(server.settings.portal_sign_ins_per_minute):
            assert client("203.0.113.7").open_link(forged).status_code == 403
        assert client("203.0.113.7").open_link(forged).status_code == 429
        assert client("198.51.100.9").open_link(url).status_code == 200
        over_https = client("198.51.100.9").http.get(
            forged, headers={"X-Forwarded-Proto": "https"}, timeout=30)
        assert "; Secure" in over_https.headers["Set-Cookie"]
        with session_scope() as session:
            assert {row.remote_addr for row in session.scalars(select(PortalSignIn))} == {
                "203.0.113.7", "198.51.100.9"}
