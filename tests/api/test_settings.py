"""GET/PUT /webhook-settings and POST /webhook-settings/rotate-secret."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import deliverer
from deliverer.delivery import service
from deliverer.delivery.claim import ClaimState
from deliverer.models import NotificationStatus, utcnow
from deliverer.partners import webhook_settings
from tests.api import helpers as t
from tests.support import helpers as h
from tests.support import receiver as rx

SETTINGS = "/api/partner/v2/webhook-settings"
ROTATE = "/api/partner/v2/webhook-settings/rotate-secret"
ENDPOINTS = "/api/partner/v2/endpoints"
NOTIFICATIONS = "/api/partner/v2/webhook-notifications"


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def signature_headers(recorded) -> dict[str, str]:
    return {name: recorded.headers[name]
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}


def test_get_settings(make_partner):
    partner = make_partner("http://127.0.0.1:9/hook", alert_email="ops@example.com")
    response = partner.api.get(SETTINGS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["url"] == "http://127.0.0.1:9/hook"
    assert body["enabled"] is True
    assert body["alertEmail"] == "ops@example.com"
    assert body["signingSecret"] == partner.signing_secret
    assert body["previousSecretExpiresAt"] is None
    assert body["updatedAt"]


def test_settings_say_when_their_urls_endpoint_is_disabled(make_partner, receiver, worker):
    # A 410 Gone disabled it while the settings said enabled: true and nothing more (the
    # merchant try): they name the endpoint and its state, and a save enables it.
    receiver.program("/hook", [rx.status(410)], then=rx.status(200))
    partner = make_partner(receiver.url("/hook"))
    assert partner.api.get(SETTINGS).json()["endpointStatus"] == "ACTIVE"
    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.FAILED)
    body = partner.api.get(SETTINGS).json()
    listed = partner.api.get(f"{NOTIFICATIONS}/{nid}").json()["endpointId"]
    assert (body["enabled"], body["endpointId"], body["endpointStatus"],
            body["disabledReason"]) == (True, listed, "DISABLED",
                                        "The receiver answered 410 Gone")
    saved = partner.api.put(SETTINGS, json={}).json()
    assert (saved["endpointStatus"], saved["disabledReason"]) == ("ACTIVE", None)
    cleared = partner.api.put(SETTINGS, json={"url": None}).json()
    assert (cleared["endpointId"], cleared["endpointStatus"]) == (None, None)


def test_put_changes_url_enabled_and_alert_email(make_partner, receiver):
    partner = make_partner("http://127.0.0.1:9/hook")
    new_url = receiver.url("/new")
    response = partner.api.put(SETTINGS, json={"url": new_url, "enabled": False,
                                               "alertEmail": "alerts@example.com"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["url"], body["enabled"], body["alertEmail"]) == (
        new_url, False, "alerts@example.com")
    assert partner.api.get(SETTINGS).json() == body
    row = t.settings_row(partner.partner_id)
    assert (row.url, row.enabled, row.alert_email) == (new_url, False, "alerts@example.com")
    # A partial update changes only what it names.
    response = partner.api.put(SETTINGS, json={"enabled": True})
    assert (response.json()["url"], response.json()["enabled"]) == (new_url, True)
    response = partner.api.put(SETTINGS, json={"alertEmail": None})
    assert response.json()["alertEmail"] is None
    assert response.json()["url"] == new_url
    response = partner.api.put(SETTINGS, json={})
    assert response.status_code == 200
    assert response.json()["url"] == new_url


def test_disabled_webhooks_are_not_sent_and_enabled_ones_are(make_partner, receiver, worker):
    partner = make_partner(receiver.url("/hook"))
    assert partner.api.put(SETTINGS, json={"enabled": False}).status_code == 200
    off = deliverer.publish_event(partner.partner_id, "transaction.paid", "TXN-OFF", {})
    assert off.status == NotificationStatus.NOT_SENT
    assert partner.api.put(SETTINGS, json={"enabled": True}).status_code == 200
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-ON")
    [got] = receiver.wait_for(1, "/hook")
    assert b"TXN-ON" in got.body
    assert h.notification(off.notification_id).status == NotificationStatus.NOT_SENT


def test_url_can_be_cleared(make_partner):
    partner = make_partner("http://127.0.0.1:9/hook")
    response = partner.api.put(SETTINGS, json={"url": None})
    assert response.status_code == 200, response.text
    assert response.json()["url"] is None
    published = deliverer.publish_event(partner.partner_id, "transaction.paid", "TXN-X", {})
    assert published.status == NotificationStatus.NOT_SENT


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "gopher://127.0.0.1:70/",
    "example.com/hook",
    "http://",
    "https:///nohost",
    "not a url",
    "",
    "http://user:pass@127.0.0.1/hook",  # credentials in the URL
    "http://127.0.0.1:99999/hook",  # port out of range
    "http://exa mple.com/",
    "https://example.com/" + "a" * 2048,
    # The receiver of https://example.com/hook under another spelling.
    "https://example.com/hook#dup", "https://example.com/hook#", "https://example.com/hook?",
])
def test_invalid_urls_are_400(make_partner, url):
    partner = make_partner("http://127.0.0.1:9/hook")
    before = t.settings_row(partner.partner_id)
    response = partner.api.put(SETTINGS, json={"url": url})
    t.assert_error(response, 400, "BAD_REQUEST")
    after = t.settings_row(partner.partner_id)
    assert (after.url, after.updated_at) == (before.url, before.updated_at)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data",  # cloud metadata
    "http://100.64.0.1/hook",  # CGNAT
    "http://0.0.0.0/hook",
    "http://[::1]/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one number
])
def test_private_addresses_are_refused_unless_allowed(make_partner, api_settings, url):
    partner = make_partner("https://93.184.216.34/hook")
    with api_settings(allow_private_urls=False):
        response = partner.api.put(SETTINGS, json={"url": url})
        t.assert_error(response, 400, "BAD_REQUEST")
        assert t.settings_row(partner.partner_id).url == "https://93.184.216.34/hook"
        # A public address literal (no DNS lookup needed) is fine.
        ok = partner.api.put(SETTINGS, json={"url": "https://93.184.216.35/hooks"})
        assert ok.status_code == 200, ok.text
    # The tests' default (DELIVERER_ALLOW_PRIVATE_URLS) lets these through.
    if url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/hook"):
        assert partner.api.put(SETTINGS, json={"url": url}).status_code == 200


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@b.c", "a b@c.d", 5,
                                   "x" * 320 + "@example.com"])
def test_invalid_alert_email_is_400(make_partner, email):
    partner = make_partner()
    response = partner.api.put(SETTINGS, json={"alertEmail": email})
    t.assert_error(response, 400, "BAD_REQUEST")
    assert t.settings_row(partner.partner_id).alert_email is None


# --------------------------------------------------------------------------- rotation


def test_rotation_overlap_carries_two_verifiable_signatures(make_partner, receiver, worker):
    partner = make_partner(receiver.url("/hook"))
    old_secret = partner.signing_secret
    response = partner.api.post(ROTATE, json={"overlapSeconds": 3600})
    assert response.status_code == 200, response.text
    body = response.json()
    new_secret = body["signingSecret"]
    assert new_secret != old_secret and new_secret.startswith("whsec_")
    assert len(base64.b64decode(new_secret[len("whsec_"):])) == 32
    expires = when(body["previousSecretExpiresAt"])
    assert timedelta(minutes=59) < expires - utcnow() <= timedelta(hours=1)

    nid = h.publish_and_wait(partner.partner_id, NotificationStatus.SENT)
    [got] = receiver.wait_for(1, "/hook")
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    headers = signature_headers(got)
    # Each secret verifies the delivery on its own, with the reference implementation.
    assert Webhook(old_secret).verify(got.body, headers)["data"] == {"amount": 1000}
    assert Webhook(new_secret).verify(got.body, headers)["data"] == {"amount": 1000}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()).verify(got.body, headers)
    assert got.headers["webhook-id"] == nid


def test_resend_during_the_overlap_is_signed_with_both(make_partner, receiver, worker,
                                                       api_settings):
    partner = make_partner(receiver.url("/hook"))
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT, reference="TXN-ROT")
    new_secret = partner.api.post(ROTATE, json={"overlapSeconds": 600}).json()["signingSecret"]
    with api_settings(resend_wait_seconds=10.0):
        assert partner.api.post(
            "/api/partner/v2/transactions/TXN-ROT/resend-webhook").status_code == 200
    resent = receiver.wait_for(2, "/hook")[1]
    for secret in (partner.signing_secret, new_secret):
        Webhook(secret).verify(resent.body, signature_headers(resent))


def test_rotation_without_overlap_drops_the_old_secret(make_partner, receiver, worker):
    partner = make_partner(receiver.url("/hook"))
    response = partner.api.post(ROTATE, json={"overlapSeconds": 0})
    assert response.status_code == 200, response.text
    new_secret = response.json()["signingSecret"]
    assert response.json()["previousSecretExpiresAt"] is None
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT)
    [got] = receiver.wait_for(1, "/hook")
    assert len(got.headers["webhook-signature"].split(" ")) == 1
    Webhook(new_secret).verify(got.body, signature_headers(got))
    with pytest.raises(WebhookVerificationError):
        Webhook(partner.signing_secret).verify(got.body, signature_headers(got))


def test_after_the_overlap_only_the_new_secret_signs(make_partner, receiver, worker):
    partner = make_partner(receiver.url("/hook"))
    new_secret = partner.api.post(ROTATE, json={"overlapSeconds": 60}).json()["signingSecret"]
    # The overlap has ended (moved into the past rather than waited for).
    from deliverer.db import session_scope

    with session_scope() as session:
        row = webhook_settings.get_settings_row(session, partner.partner_id)
        row.previous_secret_expires_at = utcnow() - timedelta(seconds=1)
    h.publish_and_wait(partner.partner_id, NotificationStatus.SENT)
    [got] = receiver.wait_for(1, "/hook")
    assert len(got.headers["webhook-signature"].split(" ")) == 1
    Webhook(new_secret).verify(got.body, signature_headers(got))


def test_rotation_default_overlap_is_a_day(make_partner):
    for kwargs in ({}, {"json": {}}):
        response = make_partner().api.post(ROTATE, **kwargs)
        assert response.status_code == 200, response.text
        expires = when(response.json()["previousSecretExpiresAt"])
        assert timedelta(hours=23, minutes=59) < expires - utcnow() <= timedelta(days=1)


def test_a_second_rotation_waits_for_the_overlap_or_drops_every_older_secret(make_partner):
    """A client retrying a rotation whose answer it lost must not drop the secret its
    receivers still verify with: during an overlap, only overlap 0 rotates again."""
    partner = make_partner()
    first = partner.api.post(ROTATE, json={"overlapSeconds": 600}).json()
    again = partner.api.post(ROTATE, json={"overlapSeconds": 600})
    t.assert_error(again, 409, "CONFLICT")
    assert first["previousSecretExpiresAt"][:19] in again.json()["message"]
    row = t.settings_row(partner.partner_id)
    assert (row.signing_secret, row.previous_secret) == (first["signingSecret"],
                                                          partner.signing_secret)
    assert partner.api.get(SETTINGS).json()["signingSecret"] == first["signingSecret"]
    # Overlap 0: a leaked secret is replaced, every older one dropped, at once.
    now = partner.api.post(ROTATE, json={"overlapSeconds": 0})
    assert now.status_code == 200, now.text
    row = t.settings_row(partner.partner_id)
    assert row.previous_secret is None and row.signing_secret == now.json()["signingSecret"]
    # With no overlap running, an overlapping rotation is fine again.
    assert partner.api.post(ROTATE, json={"overlapSeconds": 60}).status_code == 200


@pytest.mark.parametrize("body", [{"overlapSeconds": -1}, {"overlapSeconds": 604801},
                                  {"overlapSeconds": "60"}, {"overlapSeconds": 1.5},
                                  {"overlapSeconds": None}, {"overlapSeconds": True},
                                  {"overlap": 60}, [60]])
def test_rotation_rejects_bad_overlaps(make_partner, body):
    partner = make_partner()
    response = partner.api.post(ROTATE, json=body)
    t.assert_error(response, 400, "BAD_REQUEST")
    assert t.settings_row(partner.partner_id).signing_secret == partner.signing_secret


def test_a_new_webhook_url_takes_the_default_endpoint_and_its_queue_along(make_partner,
                                                                         receiver, settings):
    # A row due now with no broker message, delivered here: the session's worker, if one
    # runs, leaves it alone.
    old_url = receiver.always("/old", rx.status(500))
    partner = make_partner(old_url)
    [default] = partner.api.get(ENDPOINTS).json()["data"]
    failed = h.insert_notification(partner.partner_id, old_url,
                                   status=NotificationStatus.PENDING, next_attempt_at=utcnow())
    began = utcnow()
    assert service.deliver(failed, settings).state == ClaimState.CLAIMED
    row = h.notification(failed)
    # Later than the attempt (a ladder step, time-scaled), not than a moment after it:
    # on a loaded CI machine the step had passed by the time the row was read.
    assert row.status == NotificationStatus.FAILED and row.next_attempt_at > began

    new_url = receiver.url("/new")
    assert partner.api.put(SETTINGS, json={"url": new_url}).status_code == 200
    # The same endpoint, at the new URL, healthy: its retry goes there, now, not to the
    # URL it left after the old URL's backoff.
    [moved] = partner.api.get(ENDPOINTS).json()["data"]
    assert (moved["id"], moved["url"], moved["isDefault"], moved["status"]) == (
        default["id"], new_url, True, "ACTIVE")
    shown = partner.api.get(f"{NOTIFICATIONS}/{failed}").json()
    assert (shown["url"], shown["endpointId"]) == (new_url, default["id"])
    assert service.deliver(failed, settings).state == ClaimState.CLAIMED
    assert h.notification(failed).status == NotificationStatus.SENT
    assert len(receiver.requests("/old")) == 1 and len(receiver.requests("/new")) == 1
