"""What the portal's endpoint pages show, over HTTP against the app on a live server with a
real worker delivering to a real receiver: a failing or disabled endpoint, its retry
queue (a callback URL's beside it) earliest first and paged, and every attempt in
troubleshooting."""

from __future__ import annotations

from sqlalchemy import update

import deliverer
from deliverer.db import session_scope
from deliverer.models import Endpoint, utcnow
from deliverer.portal import queries
from deliverer.portal.chart import HEIGHT, WIDTH
from tests.console.helpers import wait_failed
from tests.portal.pages.helpers import endpoint_id, endpoint_ref
from tests.support.receiver import Receiver, ok, status


def test_endpoints_page_shows_the_failing_endpoint(portal, failing):
    shop, _first, _second = failing
    page = portal(shop.partner_id).get("/portal/")
    assert page.status_code == 200
    assert "Failing" in page.text and "since" in page.text and " ago)" in page.text
    assert "2 in queue" in page.text and "UTC" in page.text
    # Links a screen reader lists out of context say whose they are (the portal try).
    assert 'aria-label="Settings of http://127.0.0.1:' in page.text
    assert "Service unavailable" in page.text or "HTTP 503" in page.text
    # The chart: inline SVG, no script anywhere, under the console's policy.
    assert "<svg" in page.text and "<script" not in page.text
    assert f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"' in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "2 attempts" in page.text or "attempts" in page.text


def test_a_callback_urls_retry_queue_is_shown_beside_the_endpoints(
        portal, merchant, worker, receiver: Receiver, override_settings):
    """Webhooks retried at an event's callbackUrl were in the event log only: no queue,
    no next retry (the portal try)."""
    with override_settings(time_scale=1.0):  # the next try 2 minutes away: it stays put
        shop = merchant(receiver.program("/hooks", [], ok()))
        callback = receiver.program("/callback", [], status(500))
        published = deliverer.publish_event(shop.partner_id, "transaction.paid", "TXN-CB",
                                            {"amount": 1}, callback)
        wait_failed(published.notification_id)
        page = portal(shop.partner_id).get("/portal/").text
    assert 'id="other-queues"' in page and callback in page
    assert "1 in queue" in page and "Other URLs with webhooks still to be sent" in page
    # Not an endpoint of the table above (no settings, no actions).
    assert page.count('class="endpoint"') == 1


def test_no_other_queue_section_without_one(portal, failing):
    shop, _first, _second = failing
    assert 'id="other-queues"' not in portal(shop.partner_id).get("/portal/").text


def test_an_endpoints_retry_queue_lists_failures_earliest_first(portal, failing):
    shop, first, _second = failing
    client = portal(shop.partner_id)
    page = client.get(f"/portal/endpoints/{endpoint_ref(first)}")
    assert page.status_code == 200
    assert page.text.index("TXN-1") < page.text.index("TXN-2")
    assert "waits behind the first" in page.text
    assert 'id="diagnose"' in page.text
    assert 'aria-label="Troubleshoot transaction.paid TXN-1"' in page.text


def test_the_retry_queue_is_paged_earliest_first(portal, failing, monkeypatch):
    shop, first, _second = failing
    monkeypatch.setattr(queries, "QUEUE_LIMIT", 1)  # the server runs in this process
    client = portal(shop.partner_id)
    page = client.get(f"/portal/endpoints/{endpoint_ref(first)}")
    assert "TXN-1" in page.text and "TXN-2" not in page.text
    assert "Webhooks 1 to 1 of 2." in page.text and 'id="queue-first"' not in page.text
    second = client.get(page.text.split('id="queue-next"')[0].rsplit('href="', 1)[1]
                        .split('"')[0].replace("&amp;", "&"))
    assert "TXN-2" in second.text and "TXN-1" not in second.text
    assert "Webhooks 2 to 2 of 2." in second.text and 'id="queue-next"' not in second.text
    assert 'id="queue-first"' in second.text
    past = client.get(f"/portal/endpoints/{endpoint_ref(first)}", params={"after": 10**6})
    assert "No failed webhook after those already shown." in past.text
    assert 'id="empty-queue"' not in past.text
    for garbage in ("x", "-1", str(10**30)):
        shown = client.get(f"/portal/endpoints/{endpoint_ref(first)}",
                           params={"after": garbage})
        assert shown.status_code == 200 and "TXN-1" in shown.text


def test_troubleshoot_shows_every_attempt(portal, failing):
    shop, first, _second = failing
    page = portal(shop.partner_id).get(f"/portal/notifications/{first}")
    assert page.status_code == 200
    text = page.text
    assert "HTTP 503" in text and "down for maintenance" in text  # status and body
    assert " ms</td>" in text  # duration
    assert "webhook-id" in text and first in text and "User-Agent" in text  # headers sent
    assert 'id="retry"' in text and 'id="ignore"' in text
    assert shop.partner.api_key not in text and shop.partner.signing_secret not in text


def test_disabled_endpoints_say_so(portal, failing):
    shop, first, _second = failing
    with session_scope() as session:
        session.execute(update(Endpoint).where(Endpoint.id == endpoint_id(first)).values(
            disabled_at=utcnow(), disabled_reason="410 Gone"))
    client = portal(shop.partner_id)
    page = client.get("/portal/")
    assert "Disabled" in page.text and "410 Gone" in page.text
    # What it holds waits for it to be enabled, not behind a first one.
    queue = client.get(f"/portal/endpoints/{endpoint_ref(first)}")
    assert "held while the endpoint is disabled: enable it to send" in queue.text
    assert "waits behind the first" not in queue.text
