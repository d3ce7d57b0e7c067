"""The portal-sessions collection, under both the internal and the Partner API."""

from __future__ import annotations

from marshmallow import Schema, fields


class PortalSessionRequestSchema(Schema):
    read_only = fields.Boolean(load_default=False, data_key="readOnly")


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
