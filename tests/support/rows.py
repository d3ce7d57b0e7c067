"""Rows written directly in the state a test needs (a FAILED notification nothing will
send, a failing endpoint's queue), and the audit trail read back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from deliverer.db import session_scope
from deliverer.models import (
    Lane,
    Notification,
    NotificationStatus,
    PartnerRequest,
    WebhookSettings,
    utcnow,
)
from tests.support import helpers as h


def failed(partner_id: str, url: str, *, created_ago: timedelta = timedelta(0),
           status: str = NotificationStatus.FAILED, held: bool = False) -> str:
    """A notification in ``status`` with no attempt ahead of it (nothing will send it)."""
    nid = h.insert_notification(partner_id, url, lane=Lane.FIRST, next_attempt_at=None,
                                status=status)
    with session_scope() as session:
        session.execute(update(Notification).where(Notification.id == nid).values(
            created_at=utcnow() - created_ago, held=held,
            retry_attempts=3 if status == NotificationStatus.FAILED else 0,
            latest_error_payload={"kind": "http_status", "message": "HTTP 500",
                                  "httpStatus": 500, "hint": "fix it"}))
    return nid


def head_and_held(partner_id: str, url: str) -> tuple[str, str]:
    """A failing endpoint's queue: its head on the ladder, and one held behind it."""
    head = h.insert_notification(partner_id, url, lane=Lane.FIRST, status=NotificationStatus.FAILED,
                                 next_attempt_at=utcnow() + timedelta(hours=1))
    return head, failed(partner_id, url, held=True)


def set_webhook_url(partner_id: str, url: str) -> None:
    """The merchant fixes the URL in the settings (the endpoint rows stay as they are)."""
    with session_scope() as session:
        session.execute(update(WebhookSettings).where(WebhookSettings.partner_id == partner_id)
                        .values(url=url))


def partner_requests(partner_id: str | None = None, **where: Any) -> list[PartnerRequest]:
    with session_scope() as session:
        query = select(PartnerRequest).order_by(PartnerRequest.id)
        if partner_id is not None:
            query = query.where(PartnerRequest.partner_id == partner_id)
        for name, value in where.items():
            query = query.where(getattr(PartnerRequest, name) == value)
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows
