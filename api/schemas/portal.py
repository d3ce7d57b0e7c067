"""The portal-sessions collection, under both the internal and the Partner API."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate

from api.schemas.common import JsonBool, WebhookUrl


class PortalSessionRequestSchema(Schema):
    read_only = JsonBool(load_default=False, data_key="readOnly")


class PortalSessionSchema(Schema):
    url = fields.String(metadata={"description": "Opens the portal once; keep it secret."})
    expires_at = fields.DateTime(data_key="expiresAt",
                                 metadata={"description": "When the URL stops working."})
    session_expires_at = fields.DateTime(
        data_key="sessionExpiresAt",
        metadata={"description": "When the session the URL opens ends, at the latest."})
    read_only = fields.Boolean(data_key="readOnly")


class SignedOutSchema(Schema):
    signed_out = fields.Integer(data_key="signedOut")


class EndpointFormSchema(Schema):
    """The portal's endpoint form (add and edit). Event types are checked against the
    catalog by the service, which lists the valid ones."""

    url = WebhookUrl(required=True)
    # The API's limit: a longer description saved there could not be edited here.
    description = fields.String(load_default=None, validate=validate.Length(max=1000))
    event_types = fields.List(fields.String(validate=validate.Length(min=1, max=100)),
                              required=True, validate=[
                                  validate.Length(min=1, error="tick at least one, or All events"),
                                  validate.Length(max=100, error="at most {max} event types")])
    # Its range is the service's (registered.RATE_LIMIT_RANGE), as for the API.
    rate_limit = fields.Float(load_default=None, allow_none=True, allow_nan=False)
    enabled = fields.Boolean(load_default=False)


class RotateFormSchema(Schema):
    overlap_seconds = fields.Integer(load_default=86400,
                                     validate=validate.Range(min=0, max=604800))


class RecoverFormSchema(Schema):
    """The recover form: UTC days, both included; ``until`` empty: up to now."""

    since = fields.Date(required=True)
    until = fields.Date(load_default=None, allow_none=True)

    @post_load
    def _window(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        since, until = data["since"], data["until"]
        if until is not None and since > until:
            raise ValidationError("must not be later than To", "since")
        start = datetime.combine(since, time(), UTC)
        end = (datetime.combine(until, time(), UTC) + timedelta(days=1)
               if until is not None else None)
        return {"since": start, "until": end}
