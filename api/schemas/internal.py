from __future__ import annotations

from marshmallow import Schema, fields, validate

from api.schemas.common import Email, HeaderText, Id, WebhookUrl


class PublishEventSchema(Schema):
    partner_id = Id(required=True, data_key="partnerId", validate=validate.Length(min=1, max=36))
    type = fields.String(required=True, validate=validate.Length(min=1, max=100))
    reference = fields.String(required=True, validate=validate.Length(min=1, max=200))
    payload = fields.Dict(required=True)
    callback_url = WebhookUrl(load_default=None, allow_none=True, data_key="callbackUrl")


class IdempotencyHeaderSchema(Schema):
    idempotency_key = HeaderText(
        load_default=None, data_key="Idempotency-Key", validate=validate.Length(min=1, max=255),
        metadata={"description": "The producer's key for this event: a publish repeated "
                                 "with the same key (after a timeout, a 5xx) returns the "
                                 "event first recorded instead of recording another."})


class DeliverySchema(Schema):
    """One notification of the event: one per endpoint it fanned out to."""

    endpoint_id = fields.String(allow_none=True, data_key="endpointId")
    notification_id = fields.String(data_key="notificationId")
    status = fields.String()
    sequence = fields.Integer(allow_none=True)


class PublishedSchema(Schema):
    """The first notification (the default endpoint's), and every delivery."""

    event_id = fields.String(data_key="eventId")
    notification_id = fields.String(data_key="notificationId")
    status = fields.String()
    sequence = fields.Integer(allow_none=True)
    deliveries = fields.List(fields.Nested(DeliverySchema))


class CreatePartnerSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    webhook_url = WebhookUrl(load_default=None, allow_none=True, data_key="webhookUrl")
    alert_email = Email(load_default=None, allow_none=True, data_key="alertEmail")
    flow = fields.String(load_default="WEBHOOK", validate=validate.OneOf(["WEBHOOK", "POLLING"]))


class CreatedPartnerSchema(Schema):
    id = fields.String()
    api_key = fields.String(data_key="apiKey")
    signing_secret = fields.String(data_key="signingSecret")
