"""``POST /api/partner/v2/endpoints/{id}/test``: a ``webhook.test`` event sent now to one
registered endpoint, whatever it subscribes to, so a merchant can check its server.

The test event is published as any event is (its own notification, webhook-id and
sequence number on that endpoint, signed with the endpoint's secret); the caller commits,
then waits for the first attempt's outcome (``notifications.outcome.wait_for_attempt``).
Like any notification, one that failed climbs the retry ladder: ignoring it stops that.
Requests are on the audit trail and limited per partner
(``Settings.endpoint_test_rate_per_minute``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.errors import Conflict, DelivererError
from deliverer.models import RequestKind, utcnow
from deliverer.models.base import new_id
from deliverer.notifications.audit import (
    ACCEPTED,
    check_rate,
    lock_partner,
    record_request,
    reject,
)
from deliverer.notifications.cycle import endpoint_disabled, webhooks_off
from deliverer.partners import registered, webhook_settings
from deliverer.partners.service import Principal
from deliverer.publishing.service import record_events

TEST_EVENT_TYPE = "webhook.test"
TEST_MESSAGE = "A test event, sent to check this endpoint"


@dataclass(frozen=True)
class TestSent:
    endpoint_id: str  # public id
    event_id: str
    notification_id: str
    # NOT_SENT when the partner is sent no webhooks (the notification's latest error says
    # why); PENDING otherwise, until its attempt.
    status: str


def send_test_event(session: Session, settings: Settings, principal: Principal,
                    endpoint_id: str, now: datetime | None = None) -> TestSent:
    """Publish a ``webhook.test`` event to the partner's endpoint ``endpoint_id`` (its
    public id), in the session's transaction; its message goes out at the commit, which
    is the caller's. ``principal``: the partner and its API key
    (``Principal(partner_id, None)`` without one). EndpointNotFound (also for another
    partner's endpoint), Conflict (webhooks turned off, the endpoint disabled) or
    TooManyRequests otherwise, each
    on the audit trail."""
    now = now or utcnow()
    lock_partner(session, principal.partner_id)
    try:
        endpoint = registered.get(session, principal.partner_id, endpoint_id)
        if webhook_settings.turned_off(session, principal.partner_id):
            # It made a NOT_SENT row at the webhook URL, not this endpoint's, and spent a
            # test (a black-box try): refused as retries are.
            raise Conflict(webhooks_off("send a test"))
        if endpoint.disabled_at is not None:
            # It was accepted, spent a test and left a NOT_SENT event (a black-box try),
            # where a recover or a retry is refused.
            raise Conflict(endpoint_disabled(endpoint, "send a test"))
        check_rate(session, principal.partner_id, RequestKind.ENDPOINT_TEST,
                   settings.endpoint_test_rate_per_minute, now)
    except DelivererError as error:
        reject(session, principal, RequestKind.ENDPOINT_TEST, error,
               reference=endpoint_id[:200])
    [published] = record_events(session, settings, partner_id=principal.partner_id, events=[{
        "type": TEST_EVENT_TYPE, "reference": f"test-{new_id()[:8]}",
        "payload": {"message": TEST_MESSAGE}, "endpoint": endpoint.public_id}], now=now)
    record_request(session, principal, RequestKind.ENDPOINT_TEST, ACCEPTED,
                   notification_id=published.notification_id, reference=endpoint.public_id,
                   now=now)
    return TestSent(endpoint.public_id, published.event_id, published.notification_id,
                    published.status)
