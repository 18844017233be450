"""operator tokens: an expiry, so that hub API tokens need not live for ever

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 16:20:00

Tokens made before this revision keep no expiry (NULL) until they are revoked
(`qiao hub revoke-token`); new ones get one (`qiao hub operator-token --days`).
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operator_tokens") as batch:
        batch.add_column(sa.Column("expires_at", qiao.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operator_tokens") as batch:
        batch.drop_column("expires_at")
