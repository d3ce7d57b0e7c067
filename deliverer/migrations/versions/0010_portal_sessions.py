"""Merchant portal: its sessions and sign-ins, and where an audited request came from

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 08:00:00

``portal_sessions`` keeps the hashes of portal links and session cookies,
``portal_sign_ins`` the link openings the exchange's rate limit counts, and
``partner_requests.source`` says "portal" for what a merchant did in the portal. The
portal's event log reads one partner's events newest first: an index for it, built
CONCURRENTLY on PostgreSQL (as 0006 does) so publishing goes on meanwhile.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import deliverer.models.base

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = deliverer.models.base.UTCDateTime(timezone=True)
EVENTS_INDEX = ("ix_events_partner_id_created_at_id", "events",
                ["partner_id", "created_at", "id"])


def upgrade() -> None:
    op.create_table(
        "portal_sessions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("partner_id", sa.String(length=36), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=True),
        sa.Column("read_only", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("issued_by", sa.String(length=16), nullable=False),
        sa.Column("api_key_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("token_expires_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("exchanged_at", UTC, nullable=True),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.Column("flash", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"],
                                name=op.f("fk_portal_sessions_api_key_id_api_keys")),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"],
                                name=op.f("fk_portal_sessions_partner_id_partners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_sessions")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_portal_sessions_session_hash")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_portal_sessions_token_hash")),
    )
    op.create_index(op.f("ix_portal_sessions_partner_id_created_at"), "portal_sessions",
                    ["partner_id", "created_at"])
    op.create_table(
        "portal_sign_ins",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_sign_ins")),
    )
    op.create_index(op.f("ix_portal_sign_ins_remote_addr_created_at"), "portal_sign_ins",
                    ["remote_addr", "created_at"])
    with op.batch_alter_table("partner_requests") as batch:
        batch.add_column(sa.Column("source", sa.String(length=16), nullable=True))
    name, table, columns = EVENTS_INDEX
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(name, table, columns, postgresql_concurrently=True,
                            if_not_exists=True)
    else:
        op.create_index(name, table, columns)


def downgrade() -> None:
    op.drop_index(EVENTS_INDEX[0], table_name=EVENTS_INDEX[1])
    with op.batch_alter_table("partner_requests") as batch:
        batch.drop_column("source")
    op.drop_index(op.f("ix_portal_sign_ins_remote_addr_created_at"),
                  table_name="portal_sign_ins")
    op.drop_table("portal_sign_ins")
    op.drop_index(op.f("ix_portal_sessions_partner_id_created_at"),
                  table_name="portal_sessions")
    op.drop_table("portal_sessions")
