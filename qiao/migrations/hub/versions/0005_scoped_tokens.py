"""Access tokens scoped to an organization and roles (operator tokens stay platform-wide).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 06:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operator_tokens") as b:
        b.add_column(sa.Column("org_code", sa.String(18), nullable=True))
        b.add_column(sa.Column("roles", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("operator_tokens") as b:
        b.drop_column("roles")
        b.drop_column("org_code")
