"""Emergency mode (应急): declared emergencies and the exchanges made under them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "emergencies",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("resources", sa.Text, nullable=False),  # JSON array of "{org}/{code}"
        sa.Column("organizations", sa.Text, nullable=False),  # JSON array of USCCs
        sa.Column("hours", sa.Integer, nullable=False),
        sa.Column("declared_by", sa.String(200), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_by", sa.String(200), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(200), nullable=True),
        sa.Column("end_reason", sa.Text, nullable=False),
    )
    # The configuration asks for the emergencies in force on every new serial.
    op.create_index("ix_emergencies_expires_at", "emergencies", ["expires_at"])
    op.create_table(
        "emergency_accesses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("emergency_id", sa.String(16), sa.ForeignKey("emergencies.id"), nullable=False),
        sa.Column("exchange_id", sa.String(100), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("ledger_index", sa.BigInteger, nullable=True),
        sa.Column("provider_org", sa.String(18), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("client", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_by", sa.String(200), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("review_note", sa.Text, nullable=False),
        sa.UniqueConstraint("emergency_id", "node", "exchange_id"),
    )
    op.create_index("ix_emergency_accesses_emergency_id", "emergency_accesses", ["emergency_id"])


def downgrade() -> None:
    op.drop_index("ix_emergency_accesses_emergency_id", "emergency_accesses")
    op.drop_table("emergency_accesses")
    op.drop_index("ix_emergencies_expires_at", "emergencies")
    op.drop_table("emergencies")
