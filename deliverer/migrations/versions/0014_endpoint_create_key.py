"""An endpoint's create Idempotency-Key

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 07:00:00

``endpoints.create_key`` and ``create_asked``: ``POST /endpoints`` repeated under the
same Idempotency-Key answers with the endpoint the first one made
(``partners.create_keys``). Nullable columns (no rewrite of the table) and a partial
index on the keyed rows only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("create_key", sa.String(255), nullable=True))
    op.add_column("endpoints", sa.Column("create_asked", sa.String(64), nullable=True))
    op.create_index("ix_endpoints_create_key", "endpoints", ["partner_id", "create_key"],
                    postgresql_where=sa.text("create_key IS NOT NULL"),
                    sqlite_where=sa.text("create_key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_endpoints_create_key", table_name="endpoints")
    op.drop_column("endpoints", "create_asked")
    op.drop_column("endpoints", "create_key")
