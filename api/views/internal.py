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
from deliverer.partners.service import create_partner
from deliverer.publishing.service import publish_one_and_commit

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
    # In a transaction of its own, run again through transient database errors as the
    # key allows (publish_and_commit).
    return publish_one_and_commit(current_app.config["DELIVERER_SETTINGS"],
                                  idempotency_key=idempotency_key, **data)


@blp.route("/partners", methods=["POST"])
@blp.arguments(CreatePartnerSchema)
@blp.response(201, CreatedPartnerSchema)
def post_partner(data: dict[str, Any]) -> Any:
    """Create a partner. The API key is returned here and never again."""
    created = create_partner(get_session(), current_app.config["DELIVERER_SETTINGS"], **data)
    return {"id": created.partner_id, "api_key": created.api_key,
            "signing_secret": created.signing_secret}
