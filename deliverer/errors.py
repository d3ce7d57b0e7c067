"""Typed errors raised by the services; ``api.errors`` maps them to HTTP in one place.

Codes and messages marked (seed 000) are contracts published to merchants.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from deliverer.models import PartnerRequest, utcnow


@dataclass(frozen=True)
class Refusal:
    """What the audit trail keeps of a refused merchant request. The request's own
    changes roll back; the owner of its transaction (``api.db`` for a request,
    ``deliverer.db.session_scope`` for a task or a command) then writes this row."""

    partner_id: str
    api_key_id: str | None
    kind: str
    notification_id: str | None = None
    reference: str | None = None
    source: str | None = None


class DelivererError(Exception):
    status_code = 400
    code = "BAD_REQUEST"
    message = "Bad request"
    # Set on a refused merchant request that the audit trail must keep.
    refusal: Refusal | None = None

    def keep_refusal(self, session: Session) -> bool:
        """Add the refused request's audit row to ``session`` (which the caller, having
        rolled the request's changes back, commits); whether there was one."""
        refusal = self.refusal
        if refusal is None:
            return False
        session.add(PartnerRequest(
            partner_id=refusal.partner_id, api_key_id=refusal.api_key_id, kind=refusal.kind,
            outcome=self.code, notification_id=refusal.notification_id,
            reference=refusal.reference, source=refusal.source, created_at=utcnow()))
        return True

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or type(self).message
        self.headers = headers or {}
        super().__init__(self.message)


class ValidationFailed(DelivererError):
    status_code = 400
    code = "BAD_REQUEST"
    message = "Invalid request"


class Unauthorized(DelivererError):
    status_code = 401
    code = "UNAUTHORIZED"
    message = "Invalid API Key"


class InvalidPartnerFlow(DelivererError):
    status_code = 403
    code = "INVALID_PARTNER_FLOW"
    message = "The partner has an invalid flow."


class NotFound(DelivererError):
    status_code = 404
    code = "NOT_FOUND"
    message = "Not found"


class NotificationNotFound(NotFound):
    message = "Webhook notification not found"


class PartnerNotFound(NotFound):
    message = "Partner not found"


class Conflict(DelivererError):
    status_code = 409
    code = "CONFLICT"
    message = "Conflict"


class NotPushed(Conflict):
    """An operator retry or replay for a partner that is sent no webhook (POLLING flow,
    or inactive): publishing leaves its notifications NOT_SENT, and so must operators."""

    message = "The partner is sent no webhooks"


class TooManyRequests(DelivererError):
    status_code = 429
    code = "TOO_MANY_REQUESTS"
    message = "Rate limit exceeded. Try again in a few seconds."


class DeliveryFailed(DelivererError):
    """A resend the merchant waited for, which its endpoint did not accept."""

    status_code = 502
    code = "WEBHOOK_DELIVERY_FAILED"
    message = "The webhook endpoint did not accept the notification"


class UnsafeUrl(ValidationFailed):
    """A webhook URL that is not http(s), or that resolves to a forbidden address."""
