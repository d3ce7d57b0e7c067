"""Waiting briefly for what a worker did with a request: the resend API and the
console's Retry answer with the outcome when it comes within a few seconds (seeds 002,
003), and say "in progress" otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from deliverer.db import session_scope
from deliverer.models import Attempt, Notification, NotificationStatus, PartnerRequest, Trigger

R = TypeVar("R")

Outcome = tuple[str | None, dict[str, Any] | None]  # (status, the error payload if it failed)


def poll(read: Callable[[Session], R | None], timeout: float, interval: float) -> R | None:
    """``read``, each time in a short transaction of its own (SQLite: the lock is not held
    between polls), until it returns something or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            found = read(session)
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(interval)


def wait_for_resend(request_id: int, timeout: float) -> Outcome:
    """A resend request's (delivery status, error payload if it failed); PENDING if it
    is not sent yet."""
    def read(session: Session) -> Outcome | None:
        status = session.scalar(
            select(PartnerRequest.delivery_status).where(PartnerRequest.id == request_id))
        if status == NotificationStatus.FAILED:
            return status, session.scalar(
                select(Attempt.error_payload)
                .join(PartnerRequest, PartnerRequest.notification_id == Attempt.notification_id)
                .where(PartnerRequest.id == request_id, Attempt.trigger == Trigger.RESEND)
                .order_by(Attempt.id.desc()).limit(1))
        return (status, None) if status == NotificationStatus.SENT else None

    return poll(read, timeout, interval=0.05) or (NotificationStatus.PENDING, None)


def wait_for_attempt(notification_id: str, timeout: float) -> Outcome:
    """A notification's (status, latest error) once its queued attempt has an outcome;
    (None, None) if it has none yet."""
    def read(session: Session) -> Outcome | None:
        row = session.execute(
            select(Notification.status, Notification.latest_error_payload)
            .where(Notification.id == notification_id)).one_or_none()
        if row is None or row.status == NotificationStatus.PENDING:
            return None
        return row.status, row.latest_error_payload

    return poll(read, timeout, interval=0.1) or (None, None)
