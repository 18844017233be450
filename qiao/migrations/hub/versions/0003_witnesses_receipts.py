"""Nodes' witness keys, the exchange → entry index, and cosigned checkpoints.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:06:00
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("witness_key", sa.String(length=300), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("witness_url", sa.String(length=300), nullable=False, server_default="")
        )
    op.create_table(
        "ledger_exchanges",
        sa.Column(
            "idx",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=False,
        ),
        sa.Column("exchange_id", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("idx", name=op.f("pk_ledger_exchanges")),
    )
    op.create_index("ix_ledger_exchanges_exchange_id", "ledger_exchanges", ["exchange_id"])
    op.create_table(
        "ledger_cosigned",
        sa.Column(
            "size",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=False,
        ),
        sa.Column("note", sa.LargeBinary(), nullable=False),
        sa.Column("cosignatures", sa.Integer(), nullable=False),
        sa.Column("quorum_met", sa.Boolean(), nullable=False),
        sa.Column("created_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_ledger_cosigned")),
    )


def downgrade() -> None:
    op.drop_table("ledger_cosigned")
    op.drop_index("ix_ledger_exchanges_exchange_id", table_name="ledger_exchanges")
    op.drop_table("ledger_exchanges")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("witness_url")
        batch_op.drop_column("witness_key")
