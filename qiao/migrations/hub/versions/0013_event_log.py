"""events: the embedded broker's logs (one per stream and subscriber) and their positions

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 10:40:00
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("stream", sa.String(length=129), nullable=False),
        sa.Column("subscriber", sa.String(length=64), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("partition_key", sa.String(length=256), nullable=False),
        sa.Column("published_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_log")),
        sa.UniqueConstraint("stream", "subscriber", "event_id", name=op.f("uq_event_log_event_id")),
        sa.UniqueConstraint("stream", "subscriber", "offset", name=op.f("uq_event_log_stream")),
    )
    op.create_index(
        "ix_event_log_published_at", "event_log", ["stream", "published_at"], unique=False
    )
    op.create_table(
        "event_positions",
        sa.Column("stream", sa.String(length=129), nullable=False),
        sa.Column("subscriber", sa.String(length=64), nullable=False),
        sa.Column("last_offset", sa.BigInteger(), nullable=False),
        sa.Column("acked", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream", "subscriber", name=op.f("pk_event_positions")),
    )


def downgrade() -> None:
    op.drop_table("event_positions")
    op.drop_index("ix_event_log_published_at", table_name="event_log")
    op.drop_table("event_log")
