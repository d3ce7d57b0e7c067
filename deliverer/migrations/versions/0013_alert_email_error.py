"""Why an alert's e-mail was refused for good

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 02:20:00

``alerts.email_error``: the mail server's permanent refusal (a 5xx: no such mailbox,
say). Such an alert is not offered to the sweep again, and the API, the portal and the
console show why it was not e-mailed. A nullable column: no rewrite of the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("alerts", sa.Column("email_error", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("alerts", "email_error")
