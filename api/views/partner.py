"""``/api/partner/v2``: the merchant API (seed 000's contracts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app
from marshmallow import RAISE

from api import portal_links, presenters
from api.auth import check_partner, current_key_hash, current_partner, key_resolved_in_batch
from api.db import get_session
from api.resend import resend, resend_notification
from api.schemas.common import RETRY_AFTER, ApiErrorSchema
from api.schemas.partner import (
    AlertListSchema,
    AlertQuerySchema,
    NotificationDetailSchema,
    NotificationPageSchema,
    NotificationQuerySchema,
    NotificationSchema,
    ResendSchema,
    RotateSecretSchema,
    SettingsSchema,
    SettingsUpdateSchema,
)
from api.schemas.portal import PortalSessionRequestSchema, PortalSessionSchema, SignedOutSchema
from api.views.smorest import Blueprint
from deliverer.alerts import service as alerts
from deliverer.batching import Coalescer
from deliverer.errors import DelivererError
from deliverer.notifications import queries
from deliverer.notifications.ignore import ignore
from deliverer.partners import webhook_settings
from deliverer.partners.default_endpoint import default_endpoint
from deliverer.portal.sessions import ISSUED_BY_API_KEY

blp = Blueprint("partner", __name__, url_prefix="/api/partner/v2",
                description="Webhook notifications, retries, resends and settings (API key).")
blp.before_request(check_partner)


def _settings() -> Any:
    return current_app.config["DELIVERER_SETTINGS"]


def _dump(notification: Any) -> dict[str, Any]:
    session = get_session()
    return presenters.notification(notification, queries.get_event(session, notification),
                                   queries.endpoint_public_id(session, notification))


@blp.route("/webhook-notifications", methods=["GET"])
# A mistyped filter is refused, not ignored: ignored, it lists everything unfiltered.
@blp.arguments(NotificationQuerySchema, location="query", unknown=RAISE)
@blp.response(200, NotificationPageSchema)
def list_notifications(query: dict[str, Any]) -> Any:
    """List notifications, newest first, with cursor pagination. Reconciliation:
    ``endpointId`` with ``sequenceAfter`` lists what that endpoint was sent after that
    sequence number, in sequence order (numbers are gap-free per endpoint)."""
    page = queries.list_notifications(get_session(), current_partner().partner_id,
                                      queries.ListFilters(**query))
    return {"data": [presenters.notification(n, e, ep) for n, e, ep in page.items],
            "next_cursor": page.next_cursor}


@blp.route("/webhook-notifications/<notification_id>", methods=["GET"])
@blp.response(200, NotificationDetailSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
def get_notification(notification_id: str) -> Any:
    """A notification with its attempts, newest first, each with its error and hint."""
    session = get_session()
    notification = queries.get_notification(session, current_partner().partner_id,
                                            notification_id)
    event = queries.get_event(session, notification)
    body = presenters.notification(notification, event,
                                   queries.endpoint_public_id(session, notification))
    body["payload"] = event.payload
    body["attempts"] = [presenters.attempt(a) for a in queries.attempts_of(session,
                                                                           notification.id)]
    return body


@blp.route("/webhook-notifications/<notification_id>/retry", methods=["POST"])
@blp.response(200, NotificationSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
@blp.alt_response(429, schema=ApiErrorSchema, headers=RETRY_AFTER)
@key_resolved_in_batch
def retry_notification(notification_id: str) -> Any:
    """Manually retry a FAILED notification (at most 3 times; 10 per minute)."""
    retries: Coalescer[tuple[str, str], Any] = current_app.extensions["deliverer_retries"]
    outcome = retries.submit((current_key_hash(), notification_id))
    if isinstance(outcome, DelivererError):
        raise outcome
    return presenters.notification_row(outcome)


@blp.route("/webhook-notifications/<notification_id>/ignore", methods=["POST"])
@blp.response(200, NotificationSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
def ignore_notification(notification_id: str) -> Any:
    """Remove a notification from the retry queue for good (status NOT_SENT)."""
    return _dump(ignore(get_session(), current_partner(), notification_id))


@blp.route("/webhook-notifications/<notification_id>/resend", methods=["POST"])
@blp.response(200, ResendSchema)
@blp.alt_response(202, schema=ResendSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
@blp.alt_response(429, schema=ApiErrorSchema, headers=RETRY_AFTER)
def resend_one_notification(notification_id: str) -> Any:
    """Send this notification's event again, whatever its status, to its endpoint's
    current URL (an event's callback URL), as a resend by reference goes (no
    status changes; the same webhook-id). Counted with the resends by reference."""
    outcome, body = resend_notification(notification_id)
    return body, (200 if outcome == "success" else 202)


@blp.route("/transactions/<reference>/resend-webhook", methods=["POST"])
@blp.response(200, ResendSchema)
@blp.alt_response(202, schema=ResendSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(429, schema=ApiErrorSchema, headers=RETRY_AFTER)
def resend_webhook(reference: str) -> Any:
    """Send the latest event of a transaction or invoice again (no status changes)."""
    outcome, body = resend(reference)
    return body, (200 if outcome == "success" else 202)


@blp.route("/webhook-settings", methods=["GET"])
@blp.response(200, SettingsSchema)
def get_settings() -> Any:
    return _settings_answer(webhook_settings.get_settings_row(
        get_session(), current_partner().partner_id))


def _settings_answer(row: Any) -> dict[str, Any]:
    return presenters.webhook_settings(
        row, default_endpoint(get_session(), current_partner().partner_id))


@blp.route("/webhook-settings", methods=["PUT"])
@blp.arguments(SettingsUpdateSchema)
@blp.response(200, SettingsSchema)
def put_settings(data: dict[str, Any]) -> Any:
    """Change the webhook URL (validated, no private addresses), enabled flag, alert e-mail."""
    return _settings_answer(webhook_settings.update_settings(
        get_session(), _settings(), current_partner().partner_id, **data))


@blp.route("/webhook-settings/rotate-secret", methods=["POST"])
@blp.arguments(RotateSecretSchema)
@blp.response(200, SettingsSchema)
@blp.alt_response(409, schema=ApiErrorSchema)
def rotate_secret(data: dict[str, Any]) -> Any:
    """New signing secret; deliveries carry both signatures during the overlap."""
    return _settings_answer(webhook_settings.rotate_secret(
        get_session(), current_partner().partner_id,
        timedelta(seconds=data["overlap_seconds"])))


@blp.route("/webhook-alerts", methods=["GET"])
@blp.arguments(AlertQuerySchema, location="query", unknown=RAISE)
@blp.response(200, AlertListSchema)
def list_alerts(query: dict[str, Any]) -> Any:
    """Failing-endpoint alerts (after the fifth failed retry; 410 Gone), newest first."""
    rows, next_cursor = alerts.list_alerts(get_session(), current_partner().partner_id,
                                           query["limit"], query.get("cursor"))
    return {"data": [presenters.alert(a, endpoint_id) for a, endpoint_id in rows],
            "next_cursor": next_cursor}


@blp.route("/portal-sessions", methods=["POST"])
@blp.arguments(PortalSessionRequestSchema)
@blp.response(201, PortalSessionSchema)
def post_portal_session(data: dict[str, Any]) -> Any:
    """A single-use link into your merchant portal, to hand to your staff
    (``readOnly``: they can look, not act)."""
    principal = current_partner()
    return portal_links.new_link(principal.partner_id, read_only=data["read_only"],
                                 issued_by=ISSUED_BY_API_KEY, api_key_id=principal.api_key_id)


@blp.route("/portal-sessions", methods=["DELETE"])
@blp.response(200, SignedOutSchema)
def delete_portal_sessions() -> Any:
    """Sign out every portal session of yours, and spoil the unused links."""
    return portal_links.sign_out_all(current_partner().partner_id)
