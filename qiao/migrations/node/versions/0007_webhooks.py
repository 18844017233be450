"""Webhook delivery: each webhook's position and its dead-letter queue.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 12:10:00
"""

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # placeholder, being written


def downgrade() -> None:
    pass
