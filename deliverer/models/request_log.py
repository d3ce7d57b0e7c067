from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, utcnow


class RequestKind(StrEnum):
    """What a merchant (or an operator) asked for: ``partner_requests.kind``."""

    RETRY = "retry"
    RESEND = "resend"
    IGNORE = "ignore"
    # On a registered endpoint (``reference`` holds its public id): a fresh cycle for
    # its FAILED notifications of a period, and a test event sent to it.
    RECOVER = "recover"
    ENDPOINT_TEST = "endpoint_test"
    # An operator's disable or enable of an endpoint (``deliverer endpoint``).
    ENDPOINT_DISABLE = "endpoint_disable"
    ENDPOINT_ENABLE = "endpoint_enable"


class ResendStatus(StrEnum):
    """A resend request's progress: ``partner_requests.delivery_status``
    (deliverer.notifications.resend)."""

    PENDING = "PENDING"  # accepted, its message on the way to a worker
    SENDING = "SENDING"  # a worker took it (with a lease)
    SENT = "SENT"
    FAILED = "FAILED"
    # Still PENDING or SENDING a day after the request, past what the sweep recovers
    # (deliverer.scheduling.sweep.LOST_RESEND_MAX_AGE): given up, outcome unknown (a
    # SENDING one may have been POSTed by a worker that died before recording it).
    EXPIRED = "EXPIRED"


# Resends whose POST has not been recorded yet (as the partial index says it).
OPEN_RESENDS = (f"delivery_status IN ('{ResendStatus.PENDING.value}', "
                f"'{ResendStatus.SENDING.value}')")


class PartnerRequest(Base):
    """Every manual retry, resend, ignore, recover and endpoint test request: the audit
    trail.

    The rate limits count accepted rows here, so they behave the same on SQLite and
    PostgreSQL and survive restarts.
    """

    __tablename__ = "partner_requests"
    __table_args__ = (
        Index(None, "partner_id", "kind", "created_at"),
        # The console: recent actions newest first, and a notification's actions.
        Index(None, "created_at", "id"),
        Index(None, "notification_id", "created_at"),
        # The beat sweep's look-up of resends not yet done: O(open resends), not O(trail).
        Index("ix_partner_requests_open_resends", "delivery_status",
              postgresql_where=text(OPEN_RESENDS), sqlite_where=text(OPEN_RESENDS)),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    kind: Mapped[str] = mapped_column(String(16))  # RequestKind
    notification_id: Mapped[str | None] = mapped_column(String(36))
    # Where a merchant's request came from: "portal" (the merchant portal, no API key);
    # NULL: the Partner API with its key, or an operator (console, CLI).
    source: Mapped[str | None] = mapped_column(String(16))
    # A resend's transaction or invoice reference; a recover's or a test's endpoint
    # (its public id).
    reference: Mapped[str | None] = mapped_column(String(200))
    # ACCEPTED, or the error code returned (CONFLICT, TOO_MANY_REQUESTS, NOT_FOUND...).
    outcome: Mapped[str] = mapped_column(String(32))
    # For resends (ResendStatus): PENDING until a worker takes it (SENDING), then SENT or
    # FAILED.
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # For resends: when the beat sweep last sent its message again (a PENDING resend
    # whose message, sent at the request's commit or by the sweep, was not taken within
    # the lost-message grace was lost); NULL: only the request's own message.
    enqueued_at: Mapped[datetime | None]
    # For resends, while SENDING: by when the worker that took it must have recorded its
    # POST. Past it the worker is taken for dead and the sweep makes the resend PENDING
    # again, to be sent again (at least once).
    lease_expires_at: Mapped[datetime | None]
