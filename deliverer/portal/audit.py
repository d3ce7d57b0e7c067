"""What a merchant changes in the portal, on the audit trail (``partner_requests``) beside
its retries and ignores: the merchant's own request (no API key), ``source`` "portal",
the endpoint's public id (or the address) as its reference. Rate limits count other
kinds, so these never eat into them."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy.orm import Session

from deliverer.models import PortalSession
from deliverer.notifications.audit import ACCEPTED, record_request
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


def record(session: Session, portal_session: PortalSession, action: PortalAction,
           reference: str | None = None) -> None:
    record_request(session, principal(portal_session), action, ACCEPTED,
                   reference=(reference or "")[:200] or None)
