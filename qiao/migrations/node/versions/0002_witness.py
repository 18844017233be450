"""witness: the node's C2SP tlog-witness state and alerts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witness_state",
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("origin", name=op.f("pk_witness_state")),
    )
    op.create_table(
        "witness_alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=False),
        sa.Column("cosigned", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_witness_alerts")),
    )
    with op.batch_alter_table("witness_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_witness_alerts_origin", ["origin"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("witness_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_witness_alerts_origin")
    op.drop_table("witness_alerts")
    op.drop_table("witness_state")
