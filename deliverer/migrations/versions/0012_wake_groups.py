"""Wake-ups shared by groups of endpoints

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 22:00:00

A single publish to a healthy endpoint wakes the endpoint's group (one of 64, by id)
rather than the endpoint (``delivery/wakeups/wake_groups.py``): ``wake_groups`` says when the
group's pending wake-up was sent, ``endpoints.wake_by_group`` whose wake-up an endpoint's
mark stands for (a constant default: no rewrite), and a partial index on ``endpoints ((id % 64),
wake_sent_at)`` finds the endpoints it is for. The index is built CONCURRENTLY on
PostgreSQL (as 0011 does), so publishing goes on meanwhile.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import deliverer.models.base

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DATETIME = deliverer.models.base.UTCDateTime(timezone=True)
NAME = "ix_endpoints_wake_group"
COLUMNS: list[str | sa.TextClause] = [sa.text("(id % 64)"), "wake_sent_at"]
PENDING = sa.text("wake_sent_at IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "wake_groups",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("wake_sent_at", _DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wake_groups")),
    )
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("wake_by_group", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(NAME, "endpoints", COLUMNS, postgresql_where=PENDING,
                            postgresql_concurrently=True, if_not_exists=True)
    else:
        op.create_index(NAME, "endpoints", COLUMNS, sqlite_where=PENDING)


def downgrade() -> None:
    op.drop_index(NAME, table_name="endpoints")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("wake_by_group")
    op.drop_table("wake_groups")
