from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, BigIntPK, utcnow


class Endpoint(Base):
    """One webhook URL of one partner: the unit of ordering, sequencing and health.

    ``last_sequence`` hands out gap-free sequence numbers: it is bumped in the same
    transaction that inserts the notification, so a rolled-back publish leaves no hole.
    """

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("partner_id", "url"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    url: Mapped[str] = mapped_column(Text)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Health, for the per-endpoint retry queue and alerts.
    failing_since: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_success_at: Mapped[datetime | None]
    last_failure_at: Mapped[datetime | None]
    # Set when the receiver answered 410 Gone, or by an operator.
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    # Earliest time the receiver asked us to come back (Retry-After on 429/503).
    retry_after_until: Mapped[datetime | None]
    # Recovered with held notifications still to release (the sweep drains them).
    draining: Mapped[bool] = mapped_column(default=False, server_default=false())
    # One failing-endpoint alert per failing period.
    alerted_at: Mapped[datetime | None]
