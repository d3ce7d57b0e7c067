from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Mapped, mapped_column

from deliverer.models.base import Base, constant

# Endpoints share a wake-up in this many groups, by id (``delivery/wakeups/wake_groups.py``).
# Part of the schema (the partial index on endpoints, migration 0012): changing it means
# a migration, and wake-ups pending across the change are taken as lost.
WAKE_GROUPS = 64


class WakeGroup(Base):
    """The wake-up pending for a group of endpoints (``delivery/wakeups/wake_groups.py``): when it
    was sent (NULL: none). A row is created by the first publish that wakes the group."""

    __tablename__ = "wake_groups"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    wake_sent_at: Mapped[datetime | None]


def endpoint_group(endpoint_id: ColumnElement[int]) -> ColumnElement[int]:
    """An endpoint's group in SQL, written as ix_endpoints_wake_group's expression."""
    return endpoint_id % constant(WAKE_GROUPS)
