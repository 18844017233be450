"""Webhook delivery: each webhook's position and its dead-letter queue.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 12:10:00
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_positions",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("paused", sa.String(length=500), nullable=False),
        sa.Column("updated_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_webhook_positions")),
    )
    op.create_table(
        "webhook_dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("webhook", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("partition_key", sa.String(length=256), nullable=False),
        sa.Column("published_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("first_attempt_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("failed_at", qiao.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_dead_letters")),
    )
    op.create_index(
        "ix_webhook_dead_letters_webhook_state",
        "webhook_dead_letters",
        ["webhook", "state"],
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_dead_letters_webhook_state", table_name="webhook_dead_letters")
    op.drop_table("webhook_dead_letters")
    op.drop_table("webhook_positions")
