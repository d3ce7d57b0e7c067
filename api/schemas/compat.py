"""The bodies of the compatibility routes (seeds 001, 002, 004), as the seeds define them:
documented in the OpenAPI document, where a generated client read the API's error body
for every one of them (a black-box try)."""

from __future__ import annotations

from marshmallow import Schema, fields

from api.schemas.partner import ErrorPayloadSchema


class RetryQueuedSchema(Schema):
    """Seed 001's retry."""

    success = fields.Boolean(required=True)
    deliveryId = fields.String(required=True)
    message = fields.String(required=True)


class SeedDeliverySchema(Schema):
    """One of seed 001's deliveries: a notification (``deliveryId`` is its id)."""

    deliveryId = fields.String(required=True)
    eventId = fields.String(required=True)
    eventType = fields.String(required=True)
    reference = fields.String(required=True)
    status = fields.String(required=True)
    attempts = fields.Integer(required=True)
    lastError = fields.Nested(ErrorPayloadSchema, allow_none=True, required=True)
    createdAt = fields.String(required=True)
    nextAttemptAt = fields.String(allow_none=True, required=True)


class DeliveryPageSchema(Schema):
    data = fields.List(fields.Nested(SeedDeliverySchema), required=True)
    nextCursor = fields.String(allow_none=True, required=True)


class TransactionWebhookSchema(Schema):
    transaction_id = fields.String(required=True)
    webhook_url = fields.String(required=True)


class TransactionResendSchema(Schema):
    """Seed 002's resend: ``status`` success (200) or pending (202)."""

    status = fields.String(required=True)
    message = fields.String(required=True)
    data = fields.Nested(TransactionWebhookSchema, required=True)


class TransactionErrorSchema(Schema):
    """Every error of seed 002's route, in its shape."""

    status = fields.String(required=True, metadata={"example": "error"})
    message = fields.String(required=True)
    data = fields.Constant(None, allow_none=True)


class InvoiceResendSchema(Schema):
    """Seed 004's resend: ``status`` success or pending."""

    message = fields.String(required=True)
    invoice_id = fields.Raw(required=True, metadata={
        "description": "The invoice id: a number when it is all digits (as seed 004 "
                       "shows it), else the text sent"})
    status = fields.String(required=True)
