"""Resends as an outbox: the sweep's re-enqueue time and the worker's lease

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import deliverer.models.base

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_RESENDS = "delivery_status IN ('PENDING', 'SENDING')"


def upgrade() -> None:
    with op.batch_alter_table("partner_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "enqueued_at", deliverer.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "lease_expires_at",
                deliverer.models.base.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.create_index(
            "ix_partner_requests_open_resends",
            ["delivery_status"],
            unique=False,
            postgresql_where=sa.text(OPEN_RESENDS),
            sqlite_where=sa.text(OPEN_RESENDS),
        )


def downgrade() -> None:
    with op.batch_alter_table("partner_requests", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_partner_requests_open_resends",
            postgresql_where=sa.text(OPEN_RESENDS),
            sqlite_where=sa.text(OPEN_RESENDS),
        )
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("enqueued_at")
