"""Each node's event key: the X25519 public key providers seal its events to (HPKE, RFC 9180).

Existing nodes get "" (they cannot receive events yet); each makes its key on its next start
and registers the public half with the hub.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 10:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as b:
        b.add_column(sa.Column("events_key", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as b:
        b.drop_column("events_key")
