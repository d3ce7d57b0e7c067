"""Registered endpoints: several per partner, each subscribed to event types

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 08:00:00

Endpoints were rows made on first use, one per URL. They become what merchants manage:
a public id, subscriptions, a rate limit, their own signing secret, soft deletion. Each
partner's webhook-settings URL becomes its default endpoint, registered and subscribed to
everything, so existing partners receive exactly what they received before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import deliverer.models.base

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DATETIME = deliverer.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("public_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("registered", sa.Boolean(), server_default=sa.false(),
                                   nullable=False))
        batch.add_column(sa.Column("is_default", sa.Boolean(), server_default=sa.false(),
                                   nullable=False))
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch.add_column(sa.Column("event_types", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("rate_limit", sa.Float(), nullable=True))
        batch.add_column(sa.Column("next_send_at", _DATETIME, nullable=True))
        batch.add_column(sa.Column("signing_secret", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("previous_secret", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("previous_secret_expires_at", _DATETIME, nullable=True))
        batch.add_column(sa.Column("deleted_at", _DATETIME, nullable=True))
    random_hex = ("md5(random()::text || clock_timestamp()::text || id::text)"
                  if dialect == "postgresql" else "lower(hex(randomblob(16)))")
    op.execute(f"UPDATE endpoints SET public_id = 'ep_' || substr({random_hex}, 1, 24)")
    # The webhook-settings URL becomes the default endpoint. Its row exists once something
    # was published to it; otherwise it is made here, with nothing sent yet.
    op.execute(
        "INSERT INTO endpoints (partner_id, url, last_sequence, created_at, "
        "consecutive_failures, draining, registered, is_default, public_id) "
        "SELECT s.partner_id, s.url, 0, s.updated_at, 0, false, false, false, "
        f"'ep_' || substr({random_hex.replace('id::text', 's.partner_id')}, 1, 24) "
        "FROM webhook_settings s WHERE s.url IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM endpoints e WHERE e.partner_id = s.partner_id AND e.url = s.url)")
    op.execute(
        "UPDATE endpoints SET registered = true, is_default = true WHERE EXISTS "
        "(SELECT 1 FROM webhook_settings s WHERE s.partner_id = endpoints.partner_id "
        "AND s.url = endpoints.url)")
    with op.batch_alter_table("endpoints") as batch:
        batch.alter_column("public_id", existing_type=sa.String(length=40), nullable=False)
        batch.create_unique_constraint(batch.f("uq_endpoints_public_id"), ["public_id"])
    op.create_index(op.f("ix_endpoints_partner_id_registered"), "endpoints",
                    ["partner_id", "registered"])


def downgrade() -> None:
    op.drop_index(op.f("ix_endpoints_partner_id_registered"), table_name="endpoints")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_constraint(batch.f("uq_endpoints_public_id"), type_="unique")
        for column in ("deleted_at", "previous_secret_expires_at", "previous_secret",
                       "signing_secret", "next_send_at", "rate_limit", "event_types",
                       "description", "is_default", "registered", "public_id"):
            batch.drop_column(column)
