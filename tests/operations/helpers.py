"""Rows written and read directly for the operations tests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from deliverer.db import session_scope
from deliverer.models import (
    Attempt,
    PartnerRequest,
)


def add_attempt(nid: str, started_at: datetime, success: bool = False,
                url: str = "http://127.0.0.1:9/hook") -> None:
    with session_scope() as session:
        session.add(Attempt(notification_id=nid, trigger="automatic", url=url,
                            started_at=started_at, duration_ms=12, success=success,
                            response_status=200 if success else 500, response_body="x",
                            error_payload=None if success else {"kind": "http_status"}))


def attempt_count() -> int:
    with session_scope() as session:
        return len(list(session.scalars(select(Attempt.id))))


def audit(nid: str | None = None) -> list[tuple[str, str, str | None]]:
    with session_scope() as session:
        query = select(PartnerRequest).order_by(PartnerRequest.id)
        if nid is not None:
            query = query.where(PartnerRequest.notification_id == nid)
        return [(r.kind, r.outcome, r.api_key_id) for r in session.scalars(query)]
