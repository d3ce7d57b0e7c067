"""Idempotent publishing: the producer's key on each event, unique per partner

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_events_partner_id_idempotency_key"


def upgrade() -> None:
    column = sa.Column("idempotency_key", sa.String(length=255), nullable=True)
    if op.get_bind().dialect.name != "postgresql":
        # SQLite: batch mode (a copy of the table); no other writer runs during it.
        with op.batch_alter_table("events", schema=None) as batch_op:
            batch_op.add_column(column)
            batch_op.create_index(INDEX, ["partner_id", "idempotency_key"], unique=True)
        return
    # A nullable column without a default: a catalogue change, its lock held only until
    # the commit that opens the autocommit block below.
    op.add_column("events", column, if_not_exists=True)
    # Built in a transaction, the index would block every write to events (publishing
    # itself) for as long as it takes on a big table; CONCURRENTLY lets writes go on, and
    # must run outside a transaction (the block commits what ran before it). A build that
    # failed leaves an INVALID index behind: dropped first, so running this again works.
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="events", postgresql_concurrently=True,
                      if_exists=True)
        op.create_index(INDEX, "events", ["partner_id", "idempotency_key"], unique=True,
                        postgresql_concurrently=True)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.drop_column("idempotency_key")
