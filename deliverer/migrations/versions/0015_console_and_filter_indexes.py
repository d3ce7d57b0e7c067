"""What large tables made slow: the console's failing endpoints, lists by event type

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 14:30:00

At production size (2.4 M notifications, 5 M attempts: the scale try) the console's home
page took 28-50 s: per listed endpoint it read its last failed attempt from the attempts
table, and it counted FAILED notifications with a scan of all of them.
``endpoints.last_error`` keeps the last failure's error beside ``last_failure_at``
(written by the same UPDATE; empty until an endpoint's next failure), and a partial
index covers the FAILED notifications. Lists filtered by event type (the API, the
portal) scanned a big partner's events: an index on events (partner_id, type,
created_at). The indexes are built CONCURRENTLY on PostgreSQL, as 0011's.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILED = "ix_notifications_failed"
FAILED_ROWS = sa.text("status = 'FAILED'")
BY_TYPE = "ix_events_partner_id_type_created_at"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.add_column("endpoints", sa.Column("last_error", sa.JSON(), nullable=True))
        op.create_index(FAILED, "notifications", ["endpoint_id", "next_attempt_at", "held"],
                        sqlite_where=FAILED_ROWS)
        op.create_index(BY_TYPE, "events", ["partner_id", "type", "created_at"])
        return
    # A nullable column without a default: a catalogue change, committed by the block
    # below; if_not_exists, so that a run again after a failed index build works (0003).
    op.add_column("endpoints", sa.Column("last_error", sa.JSON(), nullable=True),
                  if_not_exists=True)
    with op.get_context().autocommit_block():
        # A build that failed leaves an INVALID index behind: dropped first.
        for name, table, columns, where in (
                (FAILED, "notifications", ["endpoint_id", "next_attempt_at", "held"],
                 FAILED_ROWS),
                (BY_TYPE, "events", ["partner_id", "type", "created_at"], None)):
            op.drop_index(name, table_name=table, postgresql_concurrently=True,
                          if_exists=True)
            op.create_index(name, table, columns, postgresql_where=where,
                            postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index(BY_TYPE, table_name="events")
    op.drop_index(FAILED, table_name="notifications")
    op.drop_column("endpoints", "last_error")
