"""``/internal/v1``: for the provider's own services, guarded by the admin token."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import Blueprint

from api.auth import check_admin
from api.db import get_session
from api.schemas.internal import (
    CreatedPartnerSchema,
    CreatePartnerSchema,
    IdempotencyHeaderSchema,
    PublishedSchema,
    PublishEventSchema,
)
from deliverer.db import in_transaction, is_transient_abort
from deliverer.partners.service import create_partner
from deliverer.publishing.api import ABORT_RETRY_FOR
from deliverer.publishing.service import publish_event, publish_event_once

# With an Idempotency-Key, any transient database error may be retried, even one that
# could have followed the commit: the key finds the event if it was recorded.
KEYED_RETRY_FOR = 2.0

blp = Blueprint("internal", __name__, url_prefix="/internal/v1",
                description="Publishing events and setting up partners (admin token).")
blp.before_request(check_admin)


@blp.route("/events", methods=["POST"])
@blp.arguments(IdempotencyHeaderSchema, location="headers", as_kwargs=True)
@blp.arguments(PublishEventSchema)
@blp.response(201, PublishedSchema)
def post_event(data: dict[str, Any], idempotency_key: str | None = None) -> Any:
    """Publish an event; its webhook is queued once the event is stored.

    With an Idempotency-Key header, a publish repeated with the same key returns the
    event first recorded (409 if the key was used for a different event)."""
    settings = current_app.config["DELIVERER_SETTINGS"]
    if idempotency_key is not None:
        return publish_event_once(settings, idempotency_key=idempotency_key,
                                  retry_for=KEYED_RETRY_FOR, **data)
    # Its own transaction, run again if PostgreSQL picks it as a deadlock victim against
    # a worker: such an abort rolled everything back, so a second run cannot duplicate.
    return in_transaction(lambda session: publish_event(session, settings, **data),
                          retry_for=ABORT_RETRY_FOR, only_if=is_transient_abort)


@blp.route("/partners", methods=["POST"])
@blp.arguments(CreatePartnerSchema)
@blp.response(201, CreatedPartnerSchema)
def post_partner(data: dict[str, Any]) -> Any:
    """Create a partner. The API key is returned here and never again."""
    created = create_partner(get_session(), current_app.config["DELIVERER_SETTINGS"], **data)
    return {"id": created.partner_id, "api_key": created.api_key,
            "signing_secret": created.signing_secret}
