"""Indexes for the operator console's newest-first pages

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 02:00:00

Without them the console's default pages (notifications, the event log, recent actions)
and a notification's action list scanned and sorted whole tables: 2.6-3.7 s a page with a
million rows. On PostgreSQL the indexes are built CONCURRENTLY, outside the migration's
transaction, so the release step does not block publishing and delivery while it runs.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("ix_notifications_created_at_id", "notifications", ["created_at", "id"]),
    ("ix_events_created_at_id", "events", ["created_at", "id"]),
    ("ix_partner_requests_created_at_id", "partner_requests", ["created_at", "id"]),
    ("ix_partner_requests_notification_id_created_at", "partner_requests",
     ["notification_id", "created_at"]),
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, table, columns in INDEXES:
                op.create_index(name, table, columns, postgresql_concurrently=True,
                                if_not_exists=True)
    else:
        for name, table, columns in INDEXES:
            op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in INDEXES:
        op.drop_index(name, table_name=table)
