"""What a merchant changes in the portal, on the audit trail (``partner_requests``) beside
its retries and ignores: the merchant's own request (no API key), ``source`` "portal",
the endpoint's public id (or the address) as its reference. Rate limits count other
kinds, so these never eat into them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from deliverer.errors import DelivererError
from deliverer.models import PortalSession, utcnow
from deliverer.notifications.audit import (
    ACCEPTED,
    check_rate,
    lock_partner,
    record_request,
    reject,
)
from deliverer.portal.sessions import principal


class PortalAction(StrEnum):
    """``partner_requests.kind`` of a portal action (16 characters at most)."""

    ADD_ENDPOINT = "endpoint_add"
    EDIT_ENDPOINT = "endpoint_edit"
    ENABLE_ENDPOINT = "endpoint_enable"
    DISABLE_ENDPOINT = "endpoint_disable"
    DELETE_ENDPOINT = "endpoint_delete"
    ROTATE_SECRET = "secret_rotate"
    DIAGNOSE = "diagnose"
    ALERT_EMAIL = "alert_email"
    WEBHOOKS_ON = "webhooks_on"


def record(session: Session, portal_session: PortalSession, action: PortalAction,
           reference: str | None = None) -> None:
    record_request(session, principal(portal_session), action, ACCEPTED,
                   reference=(reference or "")[:200] or None)


def record_limited(session: Session, portal_session: PortalSession, action: PortalAction,
                   reference: str, per_minute: int, now: datetime | None = None) -> None:
    """``record``, or TooManyRequests past ``per_minute`` such actions of the partner in
    the last minute (on the audit trail too): counted under the partner's lock, so that
    parallel requests cannot pass the limit together (as the API's test events)."""
    lock_partner(session, portal_session.partner_id)
    try:
        check_rate(session, portal_session.partner_id, action, per_minute, now or utcnow())
    except DelivererError as error:
        reject(session, principal(portal_session), action, error, reference=reference[:200])
    record(session, portal_session, action, reference)
