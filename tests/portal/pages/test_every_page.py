"""What holds on every portal page: another partner's ids answer 404, a flash is shown
once (on a 4xx page too), controls are labelled, and errors are pages, not JSON."""

from __future__ import annotations

from deliverer.db import session_scope
from deliverer.models import Endpoint, NotificationStatus
from tests.portal.pages.helpers import endpoint_id, endpoint_ref
from tests.support import helpers as h
from tests.support.page_client import csrf_of


def test_another_partners_ids_answer_404(portal, failing, merchant, settings):
    _shop, first, _second = failing
    other = merchant(None, name="Nosy Ltd")
    nosy = portal(other.partner_id)
    token = csrf_of(nosy.get("/portal/").text)
    event_id = h.notification(first).event_id
    for path in (f"/portal/notifications/{first}", f"/portal/notifications/{first}/ignore",
                 f"/portal/endpoints/{endpoint_ref(first)}", f"/portal/events/{event_id}",
                 "/portal/notifications/not-an-id", "/portal/endpoints/ep_000000000000000000000000",
                 f"/portal/endpoints/{endpoint_id(first)}"):
        assert nosy.get(path).status_code == 404, path
    ref = endpoint_ref(first)
    for path in (f"/portal/endpoints/{ref}/settings", f"/portal/endpoints/{ref}/delete"):
        assert nosy.get(path).status_code == 404, path
    for path in (f"/portal/notifications/{first}/retry",
                 f"/portal/notifications/{first}/ignore",
                 f"/portal/endpoints/{ref}/diagnose", f"/portal/endpoints/{ref}/settings",
                 f"/portal/endpoints/{ref}/enabled", f"/portal/endpoints/{ref}/delete",
                 f"/portal/endpoints/{ref}/rotate-secret", f"/portal/endpoints/{ref}/test"):
        answer = nosy.post(path, {"csrf_token": token, "confirm": "yes"})
        assert answer.status_code == 404, path
    assert h.notification(first).status == NotificationStatus.FAILED
    assert h.notification(first).manual_retry_count == 0
    assert "TXN-1" not in nosy.get("/portal/events").text
    with session_scope() as session:
        endpoint = session.get(Endpoint, endpoint_id(first))
        assert endpoint is not None and endpoint.disabled_at is None
        assert endpoint.registered and endpoint.deleted_at is None


def test_a_flash_is_shown_once_on_a_4xx_page_too(portal, failing):
    # A 4xx rolls the request's transaction back; the flash its page showed stays gone.
    shop, _first, _second = failing
    client = portal(shop.partner_id)
    page = client.get("/portal/alerts")
    client.post("/portal/alerts/email", {"csrf_token": csrf_of(page.text), "email": "nope"},
                allow_redirects=False)
    missing = client.get("/portal/endpoints/ep_nonexistent")
    assert missing.status_code == 404 and "not an e-mail address" in missing.text
    bad_filter = client.get("/portal/events", params={"status": "sent"})
    assert bad_filter.status_code == 400
    assert "not an e-mail address" not in bad_filter.text
    assert "not an e-mail address" not in client.get("/portal/alerts").text


def test_pages_label_their_controls(portal, failing):
    shop, first, _second = failing
    client = portal(shop.partner_id)
    for path in ("/portal/events", "/portal/alerts", "/portal/endpoints/new",
                 f"/portal/endpoints/{endpoint_ref(first)}/settings"):
        text = client.get(path).text
        for control in ("input", "select"):
            for tag in text.split(f"<{control} ")[1:]:
                if 'type="hidden"' in tag:
                    continue
                control_id = tag.split('id="')[1].split('"')[0]
                assert f'for="{control_id}"' in text, (path, control_id)


def test_errors_under_the_portal_are_pages_not_json(portal, failing):
    """Routing's 404 and 405 and the app's guards answer before the portal's own
    handlers: a reloaded POST address, an unknown path or a NUL gave the API's JSON."""
    shop, first, _second = failing
    client = portal(shop.partner_id)
    ref = endpoint_ref(first)
    for path, expected in ((f"/portal/endpoints/{ref}/diagnose", 405),
                           (f"/portal/endpoints/{ref}/rotate-secret", 405),
                           ("/portal/endpoints/", 404), ("/portal/no-such-page", 404),
                           ("/portal/events?reference=a%00b", 400)):
        answer = client.get(path)
        assert answer.status_code == expected, path
        assert answer.headers["Content-Type"].startswith("text/html"), path
        assert "<h1>" in answer.text and '"statusCode"' not in answer.text, path
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"], path
    # The API's errors stay JSON.
    assert shop.api.get("/api/partner/v2/no-such").json()["code"] == "NOT_FOUND"
