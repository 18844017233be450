"""Exchange records remember their ledger index (the records table is the ledger outbox).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchange_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ledger_index", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_exchange_records_ledger_index", ["ledger_index"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("exchange_records", schema=None) as batch_op:
        batch_op.drop_index("ix_exchange_records_ledger_index")
        batch_op.drop_column("ledger_index")
