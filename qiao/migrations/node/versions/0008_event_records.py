"""Records of published and delivered events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 12:10:00
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("batch", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("stream", sa.String(83), nullable=False),
        sa.Column("client", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("offsets", sa.JSON(), nullable=True),
        sa.Column("agreement", sa.String(64), nullable=False),
        sa.Column("via", sa.String(80), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("at", qiao.db.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_event_records_batch", "event_records", ["batch"])
    op.create_index("ix_event_records_event_id", "event_records", ["event_id"])
    op.create_index("ix_event_records_stream_id", "event_records", ["stream", "id"])


def downgrade() -> None:
    op.drop_index("ix_event_records_stream_id", table_name="event_records")
    op.drop_index("ix_event_records_event_id", table_name="event_records")
    op.drop_index("ix_event_records_batch", table_name="event_records")
    op.drop_table("event_records")
