"""Administrative actions, recorded with the action and sent on to the ledger.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 04:35:00
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ledger_index", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_events")),
    )
    op.create_index("ix_admin_events_ledger_index", "admin_events", ["ledger_index"])


def downgrade() -> None:
    op.drop_index("ix_admin_events_ledger_index", table_name="admin_events")
    op.drop_table("admin_events")
