"""An endpoint's create Idempotency-Key

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 07:00:00

``endpoints.create_key`` and ``create_asked``: ``POST /endpoints`` repeated under the
same Idempotency-Key answers with the endpoint the first one made
(``partners.create_keys``). Nullable columns (no rewrite of the table) and a partial
index on the keyed rows only, built CONCURRENTLY on PostgreSQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


NAME = "ix_endpoints_create_key"
KEYED = sa.text("create_key IS NOT NULL")


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("create_key", sa.String(255), nullable=True))
    op.add_column("endpoints", sa.Column("create_asked", sa.String(64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY, as 0011: every publish updates endpoints, and a plain CREATE
        # INDEX would hold them until it ends.
        with op.get_context().autocommit_block():
            op.create_index(NAME, "endpoints", ["partner_id", "create_key"],
                            postgresql_where=KEYED, postgresql_concurrently=True,
                            if_not_exists=True)
    else:
        op.create_index(NAME, "endpoints", ["partner_id", "create_key"], sqlite_where=KEYED)


def downgrade() -> None:
    op.drop_index(NAME, table_name="endpoints")
    op.drop_column("endpoints", "create_asked")
    op.drop_column("endpoints", "create_key")
