from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.schemas.common import Email, JsonBool, UtcDateTime, WebhookUrl
from deliverer.notifications.queries import MAX_SEQUENCE

STATUSES = ["PENDING", "SENT", "FAILED", "NOT_SENT"]


class ErrorPayloadSchema(Schema):
    kind = fields.String()
    message = fields.String()
    httpStatus = fields.Integer(allow_none=True)
    hint = fields.String()


class AttemptSchema(Schema):
    id = fields.Integer()
    trigger = fields.String()
    url = fields.String()
    started_at = fields.DateTime(data_key="startedAt")
    duration_ms = fields.Integer(data_key="durationMs")
    success = fields.Boolean()
    response_status = fields.Integer(allow_none=True, data_key="responseStatus")
    response_body = fields.String(allow_none=True, data_key="responseBody")
    error_payload = fields.Nested(ErrorPayloadSchema, allow_none=True, data_key="errorPayload")


class NotificationSchema(Schema):
    id = fields.String()
    event_id = fields.String(data_key="eventId")
    event_type = fields.String(data_key="eventType")
    reference = fields.String()
    # The endpoint it was sent to, which numbers it (sequence); null without one.
    endpoint_id = fields.String(allow_none=True, data_key="endpointId")
    status = fields.String()
    url = fields.String(allow_none=True)
    sequence = fields.Integer(allow_none=True)
    retry_attempts = fields.Integer(data_key="retryAttempts")
    manual_retry_count = fields.Integer(data_key="manualRetryCount")
    attempt_count = fields.Integer(data_key="attemptCount")
    latest_error_payload = fields.Nested(ErrorPayloadSchema, allow_none=True,
                                         data_key="latestErrorPayload")
    next_attempt_at = fields.DateTime(allow_none=True, data_key="nextAttemptAt")
    # FAILED with no next attempt of its own, behind its endpoint's earliest failure: sent
    # once the endpoint recovers. Without it, it read as exhausted (a contract audit).
    held = fields.Boolean(metadata={"description": "Waits behind its endpoint's earliest "
                                                   "failed notification; sent once the "
                                                   "endpoint recovers"})
    cycle_started_at = fields.DateTime(data_key="cycleStartedAt")
    sent_at = fields.DateTime(allow_none=True, data_key="sentAt")
    created_at = fields.DateTime(data_key="createdAt")
    updated_at = fields.DateTime(data_key="updatedAt")


class NotificationDetailSchema(NotificationSchema):
    payload = fields.Dict()
    attempts = fields.List(fields.Nested(AttemptSchema))


class NotificationPageSchema(Schema):
    data = fields.List(fields.Nested(NotificationSchema))
    next_cursor = fields.String(allow_none=True, data_key="nextCursor")


class NotificationQuerySchema(Schema):
    error_messages = {"unknown": "Unknown query parameter."}  # the views refuse them
    status = fields.String(validate=validate.OneOf(STATUSES))
    event_type = fields.String(data_key="eventType", validate=validate.Length(max=100))
    reference = fields.String(validate=validate.Length(max=200))
    created_from = UtcDateTime(data_key="createdFrom")
    created_to = UtcDateTime(data_key="createdTo")
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(max=200))
    # Reconciliation: what one endpoint was sent after the sequence number it last saw.
    endpoint_id = fields.String(data_key="endpointId", validate=validate.Length(max=40))
    sequence_after = fields.Integer(data_key="sequenceAfter",
                                    validate=validate.Range(min=0, max=MAX_SEQUENCE))

    @validates_schema
    def _window(self, data: dict[str, Any], **_: Any) -> None:
        # An empty page would say "nothing", where the query is what is wrong (as
        # recover's since and until).
        if "created_from" in data and "created_to" in data \
                and data["created_from"] > data["created_to"]:
            raise ValidationError("must not be later than createdTo",
                                  "createdFrom")


class SettingsSchema(Schema):
    url = fields.String(allow_none=True)
    enabled = fields.Boolean()
    alert_email = fields.String(allow_none=True, data_key="alertEmail")
    signing_secret = fields.String(data_key="signingSecret")
    previous_secret_expires_at = fields.DateTime(allow_none=True,
                                                 data_key="previousSecretExpiresAt")
    updated_at = fields.DateTime(data_key="updatedAt")
    # The endpoint the URL is (null without a URL): its id in notifications' endpointId,
    # and whether it is sent to (DISABLED after a 410 or days of failures: saving the
    # settings with webhooks on enables it).
    endpoint_id = fields.String(allow_none=True, data_key="endpointId")
    endpoint_status = fields.String(allow_none=True, data_key="endpointStatus",
                                    metadata={"enum": ["ACTIVE", "FAILING", "DISABLED"]})
    disabled_reason = fields.String(allow_none=True, data_key="disabledReason")


class SettingsUpdateSchema(Schema):
    url = WebhookUrl(allow_none=True)
    enabled = JsonBool()
    alert_email = Email(allow_none=True, data_key="alertEmail")


class RotateSecretSchema(Schema):
    overlap_seconds = fields.Integer(load_default=86400, data_key="overlapSeconds",
                                     strict=True, validate=validate.Range(min=0, max=604800))


class ResendSchema(Schema):
    status = fields.String()
    message = fields.String()
    reference = fields.String()
    notification_id = fields.String(data_key="notificationId")
    webhook_url = fields.String(data_key="webhookUrl")


class DeliveryQuerySchema(Schema):
    """Seed 001's list filters."""

    status = fields.String(validate=validate.OneOf(STATUSES))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(max=200))


class AlertSchema(Schema):
    id = fields.Integer()
    kind = fields.String()
    message = fields.String()
    endpoint_id = fields.String(allow_none=True, data_key="endpointId")
    notification_id = fields.String(allow_none=True, data_key="notificationId")
    created_at = fields.DateTime(data_key="createdAt")
    emailed_at = fields.DateTime(allow_none=True, data_key="emailedAt")
    # The mail server's permanent refusal (a mistyped address): not e-mailed, not retried.
    email_error = fields.String(allow_none=True, data_key="emailError")


class AlertListSchema(Schema):
    data = fields.List(fields.Nested(AlertSchema))
    next_cursor = fields.String(allow_none=True, data_key="nextCursor")


class AlertQuerySchema(Schema):
    error_messages = {"unknown": "Unknown query parameter."}
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=200))
