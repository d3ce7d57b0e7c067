"""Endpoints remember the wake-up message pending for them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 08:00:00

On PostgreSQL a publish no longer sends one delivery message per notification: it sends
one wake-up per endpoint, and only when none is pending (``delivery/wakeups/wake.py``). The
endpoint row says when the pending one was sent, set by the publish's own UPDATE of the
row and cleared by the worker that takes it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import deliverer.models.base

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DATETIME = deliverer.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("wake_sent_at", _DATETIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("wake_sent_at")
