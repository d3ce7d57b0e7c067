"""``/internal/v1``: for the provider's own services, guarded by the admin token.

Each view runs its service in a transaction of its own, committed before it answers
(``deliverer.db.in_transaction``): a publish is run again through transient database
errors as its idempotency key allows (``deliverer.publishing.own_transaction.publish``), and
creating a partner through an abort that certainly rolled everything back. The
portal-sessions views commit with the request (``api.db``), as the Partner API's do."""

from __future__ import annotations

from typing import Any

from flask import current_app

from api import portal_links
from api.auth import check_admin
from api.schemas.common import ApiErrorSchema
from api.schemas.internal import (
    CreatedPartnerSchema,
    CreatePartnerSchema,
    IdempotencyHeaderSchema,
    PublishedSchema,
    PublishEventSchema,
)
from api.schemas.portal import PortalSessionRequestSchema, PortalSessionSchema, SignedOutSchema
from api.views.smorest import Blueprint
from deliverer.db import in_transaction, is_transient_abort
from deliverer.partners.service import create_partner
from deliverer.portal.sessions import ISSUED_BY_ADMIN
from deliverer.publishing.own_transaction import PUBLISH_RETRY_FOR, publish_one

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
    return publish_one(current_app.config["DELIVERER_SETTINGS"],
                       idempotency_key=idempotency_key, **data)


@blp.route("/partners", methods=["POST"])
@blp.arguments(CreatePartnerSchema)
@blp.response(201, CreatedPartnerSchema)
def post_partner(data: dict[str, Any]) -> Any:
    """Create a partner. The API key is returned here and never again."""
    settings = current_app.config["DELIVERER_SETTINGS"]
    created = in_transaction(lambda session: create_partner(session, settings, **data),
                             retry_for=PUBLISH_RETRY_FOR, only_if=is_transient_abort)
    return {"id": created.partner_id, "api_key": created.api_key,
            "signing_secret": created.signing_secret}


@blp.route("/partners/<partner_id>/portal-sessions", methods=["POST"])
@blp.arguments(PortalSessionRequestSchema)
@blp.response(201, PortalSessionSchema)
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
def post_portal_session(data: dict[str, Any], partner_id: str) -> Any:
    """A single-use link into the partner's merchant portal (``readOnly``: no actions)."""
    return portal_links.new_link(partner_id, read_only=data["read_only"],
                                 issued_by=ISSUED_BY_ADMIN)


@blp.route("/partners/<partner_id>/portal-sessions", methods=["DELETE"])
@blp.response(200, SignedOutSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
def delete_portal_sessions(partner_id: str) -> Any:
    """Sign out every portal session of the partner, and spoil its unused links."""
    return portal_links.sign_out_all(partner_id)
