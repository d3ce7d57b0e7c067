"""The operator console over HTTP: who gets in, CSRF, and what the pages and buttons do.

The browser test (test_browser.py) clicks through it in Chromium; these check the rules
behind it request by request, against the app on a live server with a real worker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import select, update

import api
import deliverer.config
from deliverer.db import session_scope
from deliverer.models import Endpoint, Notification, NotificationStatus, Partner, PartnerFlow
from deliverer.notifications.audit import ACCEPTED, OPERATOR, check_rate
from deliverer.partners import registered
from tests.console.conftest import OPERATOR_TOKEN, ConsoleClient
from tests.console.helpers import publish, requests_of, wait_failed
from tests.support import helpers as h
from tests.support.page_client import csrf_of
from tests.support.receiver import Receiver, ok, status


@pytest.fixture
def slow_ladder(override_settings) -> Iterator[None]:
    """Real-time ladder: after a failure the next automatic try is 2 minutes away, so a
    FAILED notification stays put while the test works on it."""
    with override_settings(time_scale=1.0):
        yield


@pytest.fixture
def failing(settings, worker, receiver: Receiver, slow_ladder):
    """A partner whose endpoint answers 500, with one FAILED notification (real attempt)."""
    url = receiver.program("/hooks", [], status(500))
    partner = h.new_partner(settings, url, name="Failing Shop")
    published = publish(settings, partner.partner_id, "TXN-FAIL-1")
    wait_failed(published.notification_id)
    return partner, published, url


# -- getting in -------------------------------------------------------------------------------

def test_pages_redirect_to_sign_in_until_signed_in(console):
    client = console()
    for path in ("/console/", "/console/notifications", "/console/events"):
        response = client.get(path, allow_redirects=False)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/console/login?next=")
    response = client.get("/console/events")
    assert response.url.endswith("/console/login?next=/console/events")
    assert 'name="token"' in response.text


def test_wrong_token_is_refused_right_token_signs_in_and_follows_next(console):
    client = console()
    page = client.get("/console/login?next=/console/events")
    refused = client.post("/console/login", {"csrf_token": csrf_of(page.text),
                                             "token": OPERATOR_TOKEN + "x"})
    assert refused.status_code == 401
    assert "Wrong admin token." in refused.text
    assert client.get("/console/", allow_redirects=False).status_code == 302

    page = client.get("/console/login?next=/console/events")
    signed_in = client.post("/console/login", {"csrf_token": csrf_of(page.text),
                                               "token": OPERATOR_TOKEN,
                                               "next": "/console/events"},
                            allow_redirects=False)
    assert signed_in.status_code == 302
    assert signed_in.headers["Location"] == "/console/events"
    cookie = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert client.get("/console/").status_code == 200


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/console", "/api/partner/v2/webhook-settings",
    "/\\evil.example",
    # Control characters: a line break in the Location header was a 500.
    "/console/\r\nX: 1", "/console/\nfoo", "/console/\rfoo", "/console/\tx",
    "/\t/evil.example/console", "/console/\x00", "/console/\x7f", "/console/\x85",
    " /console/", "\n/console/",
])
def test_sign_in_never_redirects_off_the_console(console, target):
    client = console()
    page = client.get("/console/login")
    response = client.post("/console/login", {"csrf_token": csrf_of(page.text),
                                              "token": OPERATOR_TOKEN, "next": target},
                           allow_redirects=False)
    if "\x00" in target:  # refused before the view, as every form field holding NUL
        assert response.status_code == 400 and "Location" not in response.headers
        return
    assert response.status_code == 302
    assert response.headers["Location"] == "/console/"


@pytest.mark.parametrize("target", ["/console/%0Afoo", "/console/%0D%0AX:%201", "/console/%09x"])
def test_signed_in_login_page_with_control_characters_in_next(operator, target):
    response = operator.get(f"/console/login?next={target}", allow_redirects=False)
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == "/console/"


def test_sign_in_without_the_form_token_is_refused(console):
    client = console()
    client.get("/console/login")
    response = client.post("/console/login", {"token": OPERATOR_TOKEN})
    assert response.status_code == 400
    assert "Form expired" in response.text
    assert client.get("/console/", allow_redirects=False).status_code == 302


def test_basic_auth_with_the_token_as_password(console_server):
    url = console_server.url + "/console/"
    assert requests.get(url, auth=("ops", OPERATOR_TOKEN), timeout=30).status_code == 200
    wrong = requests.get(url, auth=("ops", "nope"), timeout=30, allow_redirects=False)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == 'Basic realm="deliverer console"'


def test_sign_out(operator: ConsoleClient):
    response = operator.submit("/console/", "/console/logout")
    assert response.url.endswith("/console/login")
    assert operator.get("/console/", allow_redirects=False).status_code == 302


def test_rotating_the_admin_token_signs_everybody_out(operator: ConsoleClient, console_server):
    assert operator.get("/console/").status_code == 200
    with console_server.overridden(admin_token="a-brand-new-token-7c1d"):
        assert operator.get("/console/", allow_redirects=False).status_code == 302
    assert operator.get("/console/").status_code == 200


def test_signed_session_survives_an_explicit_secret_key_but_not_a_new_token(
        operator: ConsoleClient, console_server):
    with console_server.overridden(secret_key="explicit-secret-0b7e"):
        # A different signing key: the old cookie no longer verifies.
        assert operator.get("/console/", allow_redirects=False).status_code == 302
        assert operator.login().status_code == 200
        assert operator.get("/console/").status_code == 200
        with console_server.overridden(admin_token="another-token-4d2a"):
            # Same signing key, but the mark of the old token no longer matches.
            assert operator.get("/console/", allow_redirects=False).status_code == 302


def test_console_is_closed_without_an_admin_token(settings, celery_app):
    app = api.create_app(settings.with_overrides(admin_token=None))
    deliverer.config.set_settings(settings)
    celery_app.set_current()
    celery_app.set_default()
    client = app.test_client()
    for path in ("/console/", "/console/login"):
        response = client.get(path)
        assert response.status_code == 503
        assert "console is closed" in response.text
    assert client.post("/console/login", data={"token": ""}).status_code == 503
    assert client.get("/console/", auth=("ops", "")).status_code == 503


def test_security_headers(operator: ConsoleClient):
    response = operator.get("/console/")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no script runs at all
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script" not in response.text


# -- pages --------------------------------------------------------------------------------------

def test_failing_endpoints_show_queue_depth_last_error_and_next_retry(operator, failing,
                                                                       settings):
    partner, _published, url = failing
    second = publish(settings, partner.partner_id, "TXN-FAIL-2")
    wait_failed(second.notification_id)
    page = operator.get("/console/")
    assert page.status_code == 200
    assert "Failing Shop" in page.text and url in page.text
    assert "2 in queue" in page.text
    assert "HTTP 500" in page.text or "500" in page.text
    assert "Internal server error" in page.text  # the hint
    assert "in 1m" in page.text or "in 2m" in page.text  # next retry, about 2 minutes away
    # Read from the endpoint row, written with each failure (not from attempts, which
    # took 28-50 s a page at 5 M attempts).
    with session_scope() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.url == url))
        assert endpoint.last_error["kind"] == "http_status"
        assert endpoint.last_error["httpStatus"] == 500


def test_search_by_reference_partner_status_and_id(operator, failing, settings):
    _partner, published, _ = failing
    other = h.new_partner(settings, None, name="Quiet Co")
    quiet = publish(settings, other.partner_id, "INV-QUIET")  # NOT_SENT: no URL
    by_ref = operator.get("/console/notifications", params={"q": "TXN-FAIL-1"})
    assert published.notification_id in by_ref.text and quiet.notification_id not in by_ref.text
    by_partner = operator.get("/console/notifications", params={"partner": "quiet"})
    assert quiet.notification_id in by_partner.text
    assert published.notification_id not in by_partner.text
    by_status = operator.get("/console/notifications", params={"status": "FAILED"})
    assert published.notification_id in by_status.text
    assert quiet.notification_id not in by_status.text
    by_id = operator.get("/console/notifications", params={"q": quiet.notification_id})
    assert quiet.notification_id in by_id.text and "INV-QUIET" in by_id.text
    nothing = operator.get("/console/notifications", params={"reference": "NOPE"})
    assert "No notification matches." in nothing.text


def test_endpoint_filter_and_bad_filters_said_not_applied(operator, settings):
    partner = h.new_partner(settings, "http://127.0.0.1:9/a", name="Two Endpoints")
    first = publish(settings, partner.partner_id, "TXN-EP-A")
    other = h.new_partner(settings, "http://127.0.0.1:9/b", name="Other Endpoint")
    second = publish(settings, other.partner_id, "TXN-EP-B")
    endpoint_id = h.notification(first.notification_id).endpoint_id
    with session_scope() as session:
        endpoint = session.get(Endpoint, endpoint_id)
        assert endpoint is not None
        public_id = endpoint.public_id
    # By its number (the console's links) or its public id (alerts and e-mails name it).
    for value in (endpoint_id, public_id):
        filtered = operator.get("/console/notifications", params={"endpoint_id": value})
        assert filtered.status_code == 200
        shown = (f'<span class="mono">{public_id}</span>' if value == public_id
                 else f"#{endpoint_id}")
        assert f"Endpoint {shown} only." in filtered.text
        # The search form keeps the filter as given (a new search keeps saying ep_...).
        assert f'name="endpoint_id" value="{value}"' in filtered.text
        assert first.notification_id in filtered.text
        assert second.notification_id not in filtered.text
    # The notification's page names its endpoint as the CLI and merchants do.
    detail = operator.get(f"/console/notifications/{first.notification_id}")
    assert f'endpoint <span class="mono">{public_id}</span>' in detail.text
    searched = operator.get("/console/notifications", params={"q": public_id})
    assert first.notification_id in searched.text
    assert second.notification_id not in searched.text
    # Said cut short only when it is (it said "at most 1 shown" of a lone result).
    assert "Narrow the search" not in searched.text
    cut = operator.get("/console/notifications", params={"limit": 1})
    assert "the first 1 shown. Narrow the search to see others." in cut.text
    # Out of a 64-bit column's range (was an OverflowError, a 500), not positive, not a
    # number, no such endpoint: not applied, and said (a mistyped filter showed every
    # partner's notifications as if they were the filtered result).
    for bad in ("9223372036854775808", "-99999999999999999999", "0", "-1", "x", "1.5",
                "ep_nonexistent"):
        page = operator.get("/console/notifications", params={"endpoint_id": bad})
        assert page.status_code == 400, (bad, page.status_code)
        assert 'id="filter-problems"' in page.text and "Endpoint #" not in page.text
        assert first.notification_id in page.text and second.notification_id in page.text
    bogus = operator.get("/console/notifications", params={"status": "BOGUS"})
    assert bogus.status_code == 400
    assert "Not applied: “BOGUS” is not a delivery status." in bogus.text
    assert operator.get("/console/notifications",
                        params={"endpoint_id": ""}).status_code == 200
    largest = operator.get("/console/notifications",
                           params={"endpoint_id": "9223372036854775807"})
    assert largest.status_code == 200
    assert "No notification matches." in largest.text


def test_notification_page_shows_attempts_errors_hints_and_payload(operator, failing):
    _, published, url = failing
    page = operator.get(f"/console/notifications/{published.notification_id}")
    assert page.status_code == 200
    text = page.text
    assert "FAILED" in text and "TXN-FAIL-1" in text and url in text
    assert "HTTP 500" in text
    assert "Internal server error: usually a generic error from your server" in text
    assert "&#34;amount&#34;: 1000" in text or '"amount": 1000' in text
    assert 'id="retry"' in text and 'id="ignore"' in text
    assert operator.get("/console/notifications/not-a-uuid").status_code == 404


def test_retry_ignores_merchant_limits_and_is_recorded_as_operator(operator, failing,
                                                                    receiver: Receiver):
    partner, published, _url = failing
    nid = published.notification_id
    # The merchant has used up their three manual retries.
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == nid)
                        .values(manual_retry_count=3))
    receiver.program("/hooks", [], ok())
    page = f"/console/notifications/{nid}"
    response = operator.submit(page, f"{page}/retry")
    assert response.status_code == 200
    assert response.url.endswith(page)
    h.wait_until(lambda: h.sent(nid), message="operator retry delivered")
    assert "Retry delivered" in response.text or "Retry queued" in response.text
    row = h.notification(nid)
    assert row.manual_retry_count == 3  # the merchant's allowance is untouched
    audit = requests_of(nid)
    assert [(r.kind, r.outcome, r.api_key_id) for r in audit] == [("retry", OPERATOR, None)]
    # Not counted by the merchant's rate limit (it counts ACCEPTED rows only).
    assert all(r.outcome != ACCEPTED for r in audit)
    with session_scope() as session:
        check_rate(session, partner.partner_id, "retry", 1, h.utcnow())
    page_after = operator.get(page)
    assert ">SENT<" in page_after.text and "operator" in page_after.text
    assert 'id="retry"' not in page_after.text


def test_retry_of_a_delivered_notification_is_refused(operator, settings, worker,
                                                      receiver: Receiver):
    partner = h.new_partner(settings, receiver.program("/fine", [], ok()))
    published = publish(settings, partner.partner_id, "TXN-OK")
    h.wait_until(lambda: h.sent(published.notification_id))
    path = f"/console/notifications/{published.notification_id}"
    page = operator.get(path)
    assert 'id="retry"' not in page.text  # no button for it
    response = operator.post(f"{path}/retry", {"csrf_token": csrf_of(page.text)})
    assert "Retry refused: Notification is not in FAILED status" in response.text
    assert h.notification(published.notification_id).status == NotificationStatus.SENT


def test_retry_for_a_polling_partner_is_refused(operator, failing):
    """A POLLING partner is sent no webhook: the operator's Retry says so and does
    nothing."""
    partner, published, _url = failing
    nid = published.notification_id
    with session_scope() as session:
        session.execute(update(Partner).where(Partner.id == partner.partner_id)
                        .values(flow=PartnerFlow.POLLING))
    page = f"/console/notifications/{nid}"
    response = operator.submit(page, f"{page}/retry")
    assert response.status_code == 200 and response.url.endswith(page)
    assert "Retry refused: The partner is on the POLLING flow" in response.text
    assert h.notification(nid).status == NotificationStatus.FAILED
    assert requests_of(nid) == []


def test_actions_need_the_form_token(operator, failing):
    _, published, _ = failing
    nid = published.notification_id
    for action in ("retry", "ignore"):
        response = operator.post(f"/console/notifications/{nid}/{action}", {})
        assert response.status_code == 400
        response = operator.post(f"/console/notifications/{nid}/{action}",
                                 {"csrf_token": "forged-" + "x" * 40})
        assert response.status_code == 400
    assert h.notification(nid).status == NotificationStatus.FAILED
    assert requests_of(nid) == []


def test_signed_out_post_is_refused(console, failing):
    client = console()
    page = client.get("/console/login")  # a CSRF token, but no sign-in
    response = client.post(f"/console/notifications/{failing[1].notification_id}/ignore",
                           {"csrf_token": csrf_of(page.text)})
    assert response.status_code == 401
    assert h.notification(failing[1].notification_id).status == NotificationStatus.FAILED


def test_ignore_takes_it_out_of_the_queue_for_good(operator, failing, receiver: Receiver):
    _, published, _ = failing
    nid = published.notification_id
    page = f"/console/notifications/{nid}"
    response = operator.submit(page, f"{page}/ignore")
    assert "Notification ignored" in response.text
    row = h.notification(nid)
    assert row.status == NotificationStatus.NOT_SENT and row.next_attempt_at is None
    audit = requests_of(nid)
    assert [(r.kind, r.outcome, r.api_key_id) for r in audit] == [("ignore", OPERATOR, None)]
    assert 'id="retry"' not in response.text and 'id="ignore"' not in response.text


def test_event_log_lists_events_with_delivery_status_and_actions(operator, failing, settings):
    _partner, published, _ = failing
    page = f"/console/notifications/{published.notification_id}"
    operator.submit(page, f"{page}/ignore")
    log = operator.get("/console/events")
    assert log.status_code == 200
    assert "TXN-FAIL-1" in log.text and "transaction.paid" in log.text
    assert "NOT_SENT" in log.text and OPERATOR in log.text
    filtered = operator.get("/console/events", params={"partner": "Nobody"})
    assert "TXN-FAIL-1" not in filtered.text


def test_an_event_sent_to_two_endpoints_reads_as_one_event(operator, settings):
    """The RabbitMQ try: one row per endpoint, identical but for the status and no
    endpoint column, read as a publish made twice."""
    shop = h.new_partner(settings, "http://127.0.0.1:9/main", name="Fan Co")
    with session_scope() as session:
        registered.create(session, settings, shop.partner_id, url="http://127.0.0.1:9/billing")
    publish(settings, shop.partner_id, "TXN-FAN-1")
    log = operator.get("/console/events", params={"partner": "Fan Co"}).text
    assert log.count('class="event"') == 1 and log.count('class="event fan-out"') == 1
    assert log.count("TXN-FAN-1") == 1 and "same event" in log
    assert "http://127.0.0.1:9/main" in log and "http://127.0.0.1:9/billing" in log
