"""Maintenance runs: when a periodic job last completed, and its claim

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 17:00:00

Beat no longer keeps a schedule file; the daily attempt purge is triggered hourly and
this table says whether it is due and who runs it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import deliverer.models.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("claimed_until", deliverer.models.base.UTCDateTime(timezone=True),
                  nullable=True),
        sa.Column("last_completed_at", deliverer.models.base.UTCDateTime(timezone=True),
                  nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_runs")),
    )


def downgrade() -> None:
    op.drop_table("maintenance_runs")
