from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, utcnow

# Alerts not e-mailed yet (deliverer.alerts.service).
UNMAILED = "emailed_at IS NULL"


class Alert(Base):
    """A failing-endpoint alert (seed 003: after the fifth failed retry)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index(None, "partner_id", "created_at"),
        # The alert sweep's look-up of recent alerts not e-mailed yet: O(those), not O(table).
        Index("ix_alerts_unmailed", "created_at",
              postgresql_where=text(UNMAILED), sqlite_where=text(UNMAILED)),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"))
    notification_id: Mapped[str | None] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the server accepted the alert's e-mail; NULL: not (yet) e-mailed.
    emailed_at: Mapped[datetime | None]
    # While a worker is e-mailing the alert: until when no other may. Past it the worker is
    # taken for dead (killed mid-send) and the alert may be e-mailed again.
    email_claimed_until: Mapped[datetime | None]
    # The mail server's permanent refusal (5xx), if it gave one: not tried again.
    email_error: Mapped[str | None] = mapped_column(Text)
