"""``/api/partner/v2/endpoints`` and ``/event-types``: a merchant's registered endpoints
(``deliverer.partners.registered``), each subscribed to event types, and the catalog
they subscribe from. Same API key, error body and OpenAPI document as the rest of the
partner API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app

from api import presenters
from api.auth import check_partner, current_partner
from api.db import commit_then, get_session
from api.schemas.common import RETRY_AFTER, ApiErrorSchema
from api.schemas.endpoints import (
    CreateKeyHeaderSchema,
    EndpointCreateSchema,
    EndpointDeletedSchema,
    EndpointListSchema,
    EndpointSchema,
    EndpointTestSchema,
    EndpointUpdateSchema,
    EndpointWithSecretSchema,
    EventTypeListSchema,
    RecoveredSchema,
    RecoverSchema,
)
from api.schemas.partner import RotateSecretSchema
from api.views.smorest import Blueprint
from deliverer.models import NotificationStatus
from deliverer.notifications.outcome import wait_for_attempt
from deliverer.notifications.recover import recover
from deliverer.partners import catalog, registered
from deliverer.publishing.endpoint_check import send_test_event

blp = Blueprint("endpoints", __name__, url_prefix="/api/partner/v2",
                description="Registered webhook endpoints and the event types they "
                            "subscribe to (API key).")
blp.before_request(check_partner)


def _settings() -> Any:
    return current_app.config["DELIVERER_SETTINGS"]


def _partner_id() -> str:
    return current_partner().partner_id


@blp.route("/endpoints", methods=["GET"])
@blp.response(200, EndpointListSchema)
def list_endpoints() -> Any:
    """The partner's endpoints, oldest first (the default one is its webhook-settings URL)."""
    return {"data": [presenters.endpoint(e)
                     for e in registered.listed(get_session(), _partner_id())]}


@blp.route("/endpoints", methods=["POST"])
@blp.arguments(CreateKeyHeaderSchema, location="headers", as_kwargs=True)
@blp.arguments(EndpointCreateSchema)
@blp.response(201, EndpointWithSecretSchema, headers={"Idempotent-Replayed": {
    "description": "true when a create repeated under its Idempotency-Key answers with "
                   "the endpoint the first one made", "schema": {"type": "string"}}})
@blp.alt_response(409, schema=ApiErrorSchema)
def create_endpoint(data: dict[str, Any], idempotency_key: str | None = None) -> Any:
    """A new endpoint, subscribed to ``eventTypes`` (default ``["*"]``), with a signing
    secret of its own, shown in this answer only (and in the answer to this create
    repeated under its Idempotency-Key within 24 hours, marked Idempotent-Replayed)."""
    endpoint, replayed = registered.create_keyed(get_session(), _settings(), _partner_id(),
                                                 idempotency_key, **data)
    assert endpoint.signing_secret is not None
    body = presenters.endpoint(endpoint, secret=endpoint.signing_secret)
    return (body, 201, {"Idempotent-Replayed": "true"}) if replayed else body


@blp.route("/endpoints/<endpoint_id>", methods=["GET"])
@blp.response(200, EndpointSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
def get_endpoint(endpoint_id: str) -> Any:
    return presenters.endpoint(registered.get(get_session(), _partner_id(), endpoint_id))


@blp.route("/endpoints/<endpoint_id>", methods=["PATCH"])
@blp.arguments(EndpointUpdateSchema)
@blp.response(200, EndpointSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
def update_endpoint(data: dict[str, Any], endpoint_id: str) -> Any:
    """Change url (what it still holds goes there), description, eventTypes, enabled
    (enabling releases what it holds, in sequence order, at the drain rate), rateLimit
    (null: none)."""
    session = get_session()
    endpoint = registered.get(session, _partner_id(), endpoint_id)  # locked by the change
    return presenters.endpoint(registered.update_endpoint(session, _settings(), endpoint,
                                                          **data))


@blp.route("/endpoints/<endpoint_id>", methods=["DELETE"])
@blp.response(200, EndpointDeletedSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
def delete_endpoint(endpoint_id: str) -> Any:
    """Nothing more is sent to it; what it still holds becomes NOT_SENT, with the reason.
    Deleting the default endpoint clears the webhook-settings URL."""
    session = get_session()
    endpoint = registered.get(session, _partner_id(), endpoint_id)  # locked by the change
    stopped = registered.delete(session, endpoint)
    return {"id": endpoint.public_id, "deleted": True, "not_sent": stopped}


@blp.route("/endpoints/<endpoint_id>/rotate-secret", methods=["POST"])
@blp.arguments(RotateSecretSchema)
@blp.response(200, EndpointWithSecretSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
def rotate_endpoint_secret(data: dict[str, Any], endpoint_id: str) -> Any:
    """A new signing secret; deliveries carry both signatures during the overlap (409
    while one runs, unless overlapSeconds is 0). The default endpoint's secret is the
    webhook settings' one."""
    session = get_session()
    endpoint = registered.get(session, _partner_id(), endpoint_id, for_update=True)
    secret = registered.rotate_secret(session, endpoint,
                                      timedelta(seconds=data["overlap_seconds"]))
    return presenters.endpoint(endpoint, secret=secret)


@blp.route("/endpoints/<endpoint_id>/test", methods=["POST"])
@blp.response(200, EndpointTestSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
@blp.alt_response(429, schema=ApiErrorSchema, headers=RETRY_AFTER)
def test_endpoint(endpoint_id: str) -> Any:
    """Send a ``webhook.test`` event to this endpoint now, and answer with its first
    attempt's outcome (waiting as a resend does): delivered, or the error and its hint."""
    settings = _settings()
    sent = send_test_event(get_session(), settings, current_partner(), endpoint_id)
    # One NOT_SENT (a partner sent no webhooks) has its outcome at once.
    status, error = commit_then(
        lambda: wait_for_attempt(sent.notification_id, settings.resend_wait_seconds))
    status = status or NotificationStatus.PENDING
    return {"endpoint_id": sent.endpoint_id, "event_id": sent.event_id,
            "notification_id": sent.notification_id, "status": status,
            "delivered": status == NotificationStatus.SENT, "error": error}


@blp.route("/endpoints/<endpoint_id>/recover", methods=["POST"])
@blp.arguments(RecoverSchema)
@blp.response(200, RecoveredSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
@blp.alt_response(429, schema=ApiErrorSchema, headers=RETRY_AFTER)
def recover_endpoint(data: dict[str, Any], endpoint_id: str) -> Any:
    """A fresh cycle for this endpoint's FAILED notifications created from ``since`` to
    ``until`` (default: now), released oldest first at the drain rate; with
    ``includeNotSent``, also those not sent to it because it was disabled."""
    return recover(get_session(), _settings(), current_partner(), endpoint_id,
                   data["since"], data.get("until"),
                   include_not_sent=data["include_not_sent"])


@blp.route("/event-types", methods=["GET"])
@blp.response(200, EventTypeListSchema)
def list_event_types() -> Any:
    """The catalog endpoints subscribe from: each type's name, what it means and the
    JSON Schema of its payload."""
    return {"data": [{"name": t.name, "description": t.description, "json_schema": t.schema}
                     for t in catalog.event_types(_settings())]}
