"""Exchange records name the agreement (and any emergency) they were admitted under.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 09:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchange_records") as b:
        b.add_column(sa.Column("agreement", sa.String(64), nullable=False, server_default=""))
        b.add_column(sa.Column("emergency", sa.String(64), nullable=False, server_default=""))
    # The rate limiters seed today's count and the current window from this index at start.
    op.create_index(
        "ix_exchange_records_agreement_started_at",
        "exchange_records",
        ["agreement", "started_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_exchange_records_agreement_started_at", table_name="exchange_records")
    with op.batch_alter_table("exchange_records") as b:
        b.drop_column("emergency")
        b.drop_column("agreement")
