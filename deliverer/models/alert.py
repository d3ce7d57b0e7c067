from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, utcnow


class Alert(Base):
    """A failing-endpoint alert (seed 003: after the fifth failed retry)."""

    __tablename__ = "alerts"
    __table_args__ = (Index(None, "partner_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"))
    notification_id: Mapped[str | None] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    emailed_at: Mapped[datetime | None]
