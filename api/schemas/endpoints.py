"""The registered endpoints' routes (``api/views/endpoints.py``): what merchants send and
receive."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.schemas.common import HeaderText, JsonBool, JsonNumber, UtcDateTime, WebhookUrl
from api.schemas.partner import ErrorPayloadSchema
from deliverer.partners.registered import MAX_RATE_LIMIT, MIN_RATE_LIMIT, RATE_LIMIT_RANGE

_EVENT_TYPE = fields.String(validate=validate.Length(min=1, max=100))
_RATE_LIMIT = validate.Range(min=MIN_RATE_LIMIT, max=MAX_RATE_LIMIT, error=RATE_LIMIT_RANGE)


class EndpointSchema(Schema):
    id = fields.String()
    url = fields.String()
    description = fields.String(allow_none=True)
    event_types = fields.List(fields.String(), data_key="eventTypes")
    enabled = fields.Boolean()
    rate_limit = fields.Float(allow_none=True, data_key="rateLimit")
    status = fields.String(metadata={"enum": ["ACTIVE", "FAILING", "DISABLED"]})
    disabled_reason = fields.String(allow_none=True, data_key="disabledReason")
    failing_since = fields.DateTime(allow_none=True, data_key="failingSince")
    # The partner's webhook-settings URL: PUT /webhook-settings moves it.
    is_default = fields.Boolean(data_key="isDefault")
    created_at = fields.DateTime(data_key="createdAt")


class EndpointWithSecretSchema(EndpointSchema):
    """Created or rotated: the signing secret, shown this once."""

    signing_secret = fields.String(data_key="signingSecret")


class EndpointListSchema(Schema):
    data = fields.List(fields.Nested(EndpointSchema))


class EndpointUpdateSchema(Schema):
    """PATCH: each field given is changed, the others stay."""

    url = WebhookUrl()
    description = fields.String(allow_none=True, validate=validate.Length(max=1000))
    event_types = fields.List(_EVENT_TYPE, data_key="eventTypes",
                              validate=validate.Length(min=1, max=100))
    enabled = JsonBool()
    # null: no limit.
    rate_limit = JsonNumber(allow_none=True, data_key="rateLimit", validate=_RATE_LIMIT)


class EndpointCreateSchema(EndpointUpdateSchema):
    url = WebhookUrl(required=True)


class CreateKeyHeaderSchema(Schema):
    idempotency_key = HeaderText(
        load_default=None, data_key="Idempotency-Key", validate=validate.Length(min=1, max=255),
        metadata={"description": "The merchant's key for this create: repeated with the "
                                 "same key and body within 24 hours (after a timeout, a "
                                 "lost answer), it answers with the endpoint the first one "
                                 "made, its secret included (Idempotent-Replayed: true); "
                                 "409 for another body."})


class EndpointDeletedSchema(Schema):
    id = fields.String()
    deleted = fields.Boolean()
    # What it still held, now NOT_SENT with the reason.
    not_sent = fields.Integer(data_key="notSent")


class RecoverSchema(Schema):
    since = UtcDateTime(required=True)
    until = UtcDateTime()
    # Also what it was not sent while disabled (NOT_SENT, endpoint_disabled).
    include_not_sent = JsonBool(load_default=False, data_key="includeNotSent")

    @validates_schema
    def _window(self, data: dict[str, Any], **_: Any) -> None:
        if "until" in data and data["since"] > data["until"]:
            raise ValidationError("since must not be later than until", "since")


class RecoveredSchema(Schema):
    endpoint_id = fields.String(data_key="endpointId")
    recovered = fields.Integer()
    more = fields.Boolean()
    last_due_at = fields.DateTime(allow_none=True, data_key="lastDueAt")


class EndpointTestSchema(Schema):
    endpoint_id = fields.String(data_key="endpointId")
    event_id = fields.String(data_key="eventId")
    notification_id = fields.String(data_key="notificationId")
    # SENT (delivered), FAILED, NOT_SENT (the partner is sent no webhooks) or PENDING
    # (no outcome within the wait; GET /webhook-notifications/{notificationId} later).
    status = fields.String(metadata={"enum": ["SENT", "FAILED", "NOT_SENT", "PENDING"]})
    delivered = fields.Boolean()
    error = fields.Nested(ErrorPayloadSchema, allow_none=True)


class EventTypeSchema(Schema):
    name = fields.String()
    description = fields.String()
    json_schema = fields.Dict(data_key="schema")


class EventTypeListSchema(Schema):
    data = fields.List(fields.Nested(EventTypeSchema))
