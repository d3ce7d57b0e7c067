"""Typed errors raised by the services; ``api.errors`` maps them to HTTP in one place.

Codes and messages marked (seed 000) are contracts published to merchants.
"""

from __future__ import annotations


class DelivererError(Exception):
    status_code = 400
    code = "BAD_REQUEST"
    message = "Bad request"

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


class UnsafeUrl(ValidationFailed):
    """A webhook URL that is not http(s), or that resolves to a forbidden address."""
