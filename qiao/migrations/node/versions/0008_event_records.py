"""Records of published and delivered events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 12:10:00
"""

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # placeholder, being written


def downgrade() -> None:
    pass
