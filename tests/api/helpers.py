"""Helpers for the Partner API tests: error shapes, rows read and changed directly."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from sqlalchemy import func, select, update

from api.errors import SEED_002_PREFIX
from deliverer.db import session_scope
from deliverer.models import (
    ApiKey,
    Attempt,
    Event,
    Notification,
    Partner,
    PartnerRequest,
    WebhookSettings,
)
from tests.support import helpers as h
from tests.support.live_server import ApiClient
from tests.support.rows import partner_requests

T = TypeVar("T")

ERROR_KEYS = {"statusCode", "code", "message"}

# Seed 000's messages, verbatim.
MISSING = "API Key is missing"
BAD_FORMAT = "Invalid API Key format"
INVALID = "Invalid API Key"
INVALID_FLOW = "The partner has an invalid flow."
NOT_FOUND = "Webhook notification not found"
NOT_FAILED = "Notification is not in FAILED status"
MAX_MANUAL = "Partner webhook notification has reached the maximum number of manual retries (3)"
RATE_LIMITED = "Rate limit exceeded. Try again in a few seconds."


@dataclass
class ApiPartner:
    partner_id: str
    api_key: str
    signing_secret: str
    api: ApiClient  # X-Api-Key
    bearer: ApiClient  # Authorization: Bearer


def assert_error(response: requests.Response, status: int, code: str | None = None,
                 message: str | None = None) -> dict[str, Any]:
    """The one error body: exactly statusCode, code, message (plus errors for validation);
    under seed 002's prefix, its shape: status "error", message, data null."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("Content-Type", "").startswith("application/json"), \
        response.headers
    body = response.json()
    assert isinstance(body, dict), body
    if urlsplit(response.request.url or "").path.startswith(SEED_002_PREFIX):
        assert set(body) == {"status", "message", "data"}, body
        assert body["status"] == "error" and body["data"] is None, body
        assert message is None or body["message"] == message, body
        return body
    assert ERROR_KEYS <= set(body) <= ERROR_KEYS | {"errors"}, body
    assert body["statusCode"] == status, body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["code"] == code, body
    if message is not None:
        assert body["message"] == message, body
    return body


def assert_client_error(response: requests.Response, status: int | None = None) -> dict[str, Any]:
    """A clear 4xx in the error format (any 4xx unless ``status`` is given)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return assert_error(response, status or response.status_code)


# --------------------------------------------------------------------------- rows


def set_partner(partner_id: str, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(Partner).where(Partner.id == partner_id).values(**values))


def set_notification(nid: str, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == nid).values(**values))


def accepted(partner_id: str, kind: str = "retry") -> list[PartnerRequest]:
    return partner_requests(partner_id, kind=kind, outcome="ACCEPTED")


def settings_row(partner_id: str) -> WebhookSettings:
    with session_scope() as session:
        row = session.get(WebhookSettings, partner_id)
        assert row is not None
        session.expunge(row)
        return row


def row_counts() -> dict[str, int]:
    """How many rows every table the API may write to holds (to prove nothing changed)."""
    models = {"events": Event, "notifications": Notification, "attempts": Attempt,
              "partner_requests": PartnerRequest, "partners": Partner, "api_keys": ApiKey,
              "webhook_settings": WebhookSettings}
    with session_scope() as session:
        return {name: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in models.items()}


def snapshot(nid: str) -> dict[str, Any]:
    """The columns a merchant can see, for before/after comparisons."""
    row = h.notification(nid)
    return {name: getattr(row, name) for name in (
        "status", "retry_attempts", "manual_retry_count", "attempt_count", "url",
        "latest_error_payload", "next_attempt_at", "cycle_started_at", "sent_at", "lane")}


# --------------------------------------------------------------------------- responses


def statuses(responses: Sequence[requests.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)
