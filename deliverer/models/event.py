from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, new_id, utcnow


class Event(Base):
    """Something that happened to a partner's transaction or invoice."""

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "partner_id", "reference", "created_at"),
        Index(None, "created_at", "id"),  # the console's event log, newest first
        Index(None, "partner_id", "created_at", "id"),  # the merchant portal's event log
        Index(None, "partner_id", "type", "created_at"),  # lists filtered by event type
        Index(None, "partner_id", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    type: Mapped[str] = mapped_column(String(100))
    reference: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    callback_url: Mapped[str | None] = mapped_column(Text)
    # The exact bytes POSTed, serialised once at publish: every attempt sends the same
    # body, so signatures and receivers' deduplication stay consistent.
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The producer's key for this publish (its Idempotency-Key, or the Celery task id of
    # deliverer.publish_event): publishing again with the same key returns this event
    # instead of recording a second one. Unique per partner; NULL for unkeyed publishes.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
