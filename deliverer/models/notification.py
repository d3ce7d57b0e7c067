from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    false,
    or_,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, new_id, utcnow


class NotificationStatus(StrEnum):
    PENDING = "PENDING"  # not yet attempted in this cycle, or queued for a manual retry
    SENT = "SENT"  # a 2xx was received
    FAILED = "FAILED"  # the last attempt failed; retrying while next_attempt_at is set
    NOT_SENT = "NOT_SENT"  # no URL, webhooks disabled, endpoint gone, or ignored


class Lane(StrEnum):
    """Which broker queue the next attempt goes to; a retry backlog never delays the rest."""

    FIRST = "first"
    RETRY = "retry"
    MANUAL = "manual"


class Trigger(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"
    RESEND = "resend"


FAILED_INDEX = "ix_notifications_failed"
FAILED_ROWS = "status = 'FAILED'"


class Notification(Base):
    """One event to be delivered to one endpoint URL, and where its delivery stands.

    Invariant: ``next_attempt_at`` is set exactly while the notification still has an
    attempt ahead of it (PENDING, or FAILED and not exhausted). The partial index on it
    makes the beat sweep cost O(due rows), not O(table).
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "sequence"),
        Index(
            "ix_notifications_due",
            "next_attempt_at",
            postgresql_where=text("next_attempt_at IS NOT NULL"),
            sqlite_where=text("next_attempt_at IS NOT NULL"),
        ),
        Index(None, "partner_id", "created_at", "id"),
        # The operator console's newest-first pages across partners (operations.inspect).
        Index(None, "created_at", "id"),
        Index(None, "partner_id", "status", "created_at"),
        Index(None, "endpoint_id", "status", "next_attempt_at"),
        Index(None, "endpoint_id", "held", "sequence"),
        Index(None, "event_id"),
        # The console's failing endpoints: FAILED rows counted per endpoint, a few percent
        # of the table (a scan of all of it took 0.6-1.7 s at 2.4 M rows).
        Index(FAILED_INDEX, "endpoint_id", "next_attempt_at", "held",
              postgresql_where=text(FAILED_ROWS), sqlite_where=text(FAILED_ROWS)),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"))
    endpoint_id: Mapped[int | None] = mapped_column(ForeignKey("endpoints.id"))
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    url: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.PENDING)
    retry_attempts: Mapped[int] = mapped_column(default=0)
    manual_retry_count: Mapped[int] = mapped_column(default=0)
    attempt_count: Mapped[int] = mapped_column(default=0)
    latest_error_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    next_attempt_at: Mapped[datetime | None]
    cycle_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    lane: Mapped[str] = mapped_column(String(8), default=Lane.FIRST)
    # Waiting behind the earliest failed notification of its endpoint (head-of-line):
    # FAILED, no next attempt of its own until the endpoint recovers.
    held: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The claim: a worker owns the next attempt until lease_expires_at.
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None]
    # The due time a broker message was sent for (outbox bookkeeping for the sweep).
    scheduled_for: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def still_to_try() -> ColumnElement[bool]:
    """A FAILED notification with an attempt ahead: climbing the ladder (its next attempt
    set) or held behind its endpoint's head. A FAILED one with neither is exhausted."""
    return or_(Notification.next_attempt_at.is_not(None), Notification.held.is_(True))


class Attempt(Base):
    """One HTTP attempt, whatever its outcome."""

    __tablename__ = "attempts"
    __table_args__ = (
        Index(None, "notification_id", "started_at"),
        Index(None, "started_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    notification_id: Mapped[str] = mapped_column(ForeignKey("notifications.id"))
    trigger: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    duration_ms: Mapped[int]
    success: Mapped[bool]
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    error_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
