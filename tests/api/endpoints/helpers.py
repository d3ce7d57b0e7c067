"""What the endpoint API tests share: the paths, an endpoint's fields, creating one, and
counting a partner's registered endpoints."""

from __future__ import annotations

from sqlalchemy import func, select

from deliverer.db import session_scope
from deliverer.models import Endpoint

ENDPOINTS = "/api/partner/v2/endpoints"
EVENT_TYPES = "/api/partner/v2/event-types"
SETTINGS = "/api/partner/v2/webhook-settings"
FIELDS = {"id", "url", "description", "eventTypes", "enabled", "rateLimit", "status",
          "disabledReason", "failingSince", "isDefault", "createdAt"}


def endpoint_rows(partner_id: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Endpoint).where(
            Endpoint.partner_id == partner_id, Endpoint.registered.is_(True))) or 0)


def create(partner, url: str, **fields):
    response = partner.api.post(ENDPOINTS, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()
