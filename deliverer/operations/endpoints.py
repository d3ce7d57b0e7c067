"""An operator's disable or enable of a merchant's endpoint (``deliverer endpoint
disable`` / ``enable``): one hammering its merchant's server is stopped, one a 410 or
days of failures stopped is started again, without the merchant's key. Through the
service the merchant's PATCH uses (``registered.update_endpoint``), and on the audit
trail as the console's retries and ignores are (outcome ``OPERATOR``). Commits nothing."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer.config import Settings
from deliverer.errors import Conflict
from deliverer.models import Endpoint, RequestKind, utcnow
from deliverer.models.endpoint import DISABLED_BY_MERCHANT, DISABLED_BY_OPERATOR
from deliverer.operations.operator_actions import record_operator_action
from deliverer.partners import registered

log = logging.getLogger(__name__)

MERCHANT_DISABLED = ("Its merchant disabled it: enable it anyway with --force, or leave "
                     "it to the merchant")


def find(session: Session, public_id: str) -> Endpoint:
    """A registered endpoint by its public id, whoever's, locked to be changed."""
    public_id = public_id.strip().lower()
    partner_id = session.scalar(select(Endpoint.partner_id).where(
        Endpoint.public_id == public_id, Endpoint.deleted_at.is_(None)))
    if partner_id is None:
        raise registered.EndpointNotFound()
    return registered.get(session, partner_id, public_id, for_update=True)


def set_enabled(session: Session, settings: Settings, public_id: str, enabled: bool, *,
                reason: str | None = None, force: bool = False) -> Endpoint | None:
    """Disable (with ``reason``) or enable the endpoint; None when it already was. An
    endpoint its merchant disabled is enabled only with ``force``: the merchant turned
    that traffic off."""
    endpoint = find(session, public_id)
    if (endpoint.disabled_at is None) == enabled:
        return None
    if enabled and endpoint.disabled_reason == DISABLED_BY_MERCHANT and not force:
        raise Conflict(MERCHANT_DISABLED)
    was = endpoint.disabled_reason
    registered.update_endpoint(session, settings, endpoint, enabled=enabled)
    if not enabled:
        # Saving the webhook settings does not enable it (resume_deliveries).
        endpoint.disabled_reason = (DISABLED_BY_OPERATOR
                                    + (f": {reason}" if reason else ""))[:200]
    record_operator_action(
        session, endpoint.partner_id,
        RequestKind.ENDPOINT_ENABLE if enabled else RequestKind.ENDPOINT_DISABLE, utcnow(),
        reference=endpoint.public_id)
    log.info("operator %s endpoint %s of partner %s%s", "enabled" if enabled else "disabled",
             endpoint.public_id, endpoint.partner_id,
             f" (was: {was})" if enabled else f" ({endpoint.disabled_reason})")
    return endpoint
