"""Alert e-mails: a claim that expires, and an index for the alert sweep

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import deliverer.models.base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNMAILED = "emailed_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "email_claimed_until",
                deliverer.models.base.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.create_index(
            "ix_alerts_unmailed",
            ["created_at"],
            unique=False,
            postgresql_where=sa.text(UNMAILED),
            sqlite_where=sa.text(UNMAILED),
        )


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_alerts_unmailed",
            postgresql_where=sa.text(UNMAILED),
            sqlite_where=sa.text(UNMAILED),
        )
        batch_op.drop_column("email_claimed_until")
