"""A resend by reference, as the merchant API and seed 001's compatibility routes answer
it, or of one notification: recorded and committed by the request, then a short wait
for the worker's POST."""

from __future__ import annotations

from typing import Any

from flask import current_app

from api.auth import current_partner
from api.db import commit_then, get_session
from deliverer.errors import DeliveryFailed
from deliverer.notifications.outcome import wait_for_resend
from deliverer.notifications.resend import (
    ResendRequest,
    request_notification_resend,
    request_resend,
)


def resend(reference: str) -> tuple[str, dict[str, Any]]:
    """("success"|"pending", body); ``DeliveryFailed`` when the endpoint refused it."""
    settings = current_app.config["DELIVERER_SETTINGS"]
    return _answer(request_resend(get_session(), settings, current_partner(), reference))


def resend_notification(notification_id: str) -> tuple[str, dict[str, Any]]:
    """``resend``, of one notification (``POST /webhook-notifications/{id}/resend``)."""
    settings = current_app.config["DELIVERER_SETTINGS"]
    return _answer(request_notification_resend(get_session(), settings, current_partner(),
                                               notification_id))


def _answer(request: ResendRequest) -> tuple[str, dict[str, Any]]:
    settings = current_app.config["DELIVERER_SETTINGS"]
    status, error = commit_then(
        lambda: wait_for_resend(request.request_id, settings.resend_wait_seconds))
    body = {"reference": request.reference, "notification_id": request.notification_id,
            "webhook_url": request.url}
    if status == "SENT":
        return "success", {**body, "status": "success", "message": "Webhook sent successfully"}
    if status == "FAILED":
        raise DeliveryFailed(
            f"Resend failed: {(error or {}).get('message', 'delivery failed')}"
        )
    return "pending", {**body, "status": "pending", "message": "Webhook resend in progress"}
