from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, utcnow


class PartnerRequest(Base):
    """Every manual retry, resend and ignore request: the audit trail.

    The rate limits count accepted rows here, so they behave the same on SQLite and
    PostgreSQL and survive restarts.
    """

    __tablename__ = "partner_requests"
    __table_args__ = (Index(None, "partner_id", "kind", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    kind: Mapped[str] = mapped_column(String(16))  # retry | resend | ignore
    notification_id: Mapped[str | None] = mapped_column(String(36))
    reference: Mapped[str | None] = mapped_column(String(200))
    # ACCEPTED, or the error code returned (CONFLICT, TOO_MANY_REQUESTS, NOT_FOUND...).
    outcome: Mapped[str] = mapped_column(String(32))
    # For resends: PENDING until the worker's attempt, then SENT or FAILED.
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
