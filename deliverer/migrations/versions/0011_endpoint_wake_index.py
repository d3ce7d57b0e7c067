"""Endpoints whose wake-up is pending, the longest-waiting first

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:00:00

Behind a backlog a wake-up fills its batch with the due first attempts of endpoints whose
own wake-ups have waited longest (``delivery/wakeups/wake.py``): a partial index on the pending
mark finds them without reading every endpoint. Built CONCURRENTLY on PostgreSQL (as
0006 does), so publishing goes on meanwhile.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_endpoints_wake_sent_at"
PENDING = sa.text("wake_sent_at IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(NAME, "endpoints", ["wake_sent_at"], postgresql_where=PENDING,
                            postgresql_concurrently=True, if_not_exists=True)
    else:
        op.create_index(NAME, "endpoints", ["wake_sent_at"], sqlite_where=PENDING)


def downgrade() -> None:
    op.drop_index(NAME, table_name="endpoints")
