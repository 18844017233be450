"""App credentials: API keys gain scopes and a link to the key that replaced them; keys
without an expiry get the default 90 days from now (every key now expires).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 06:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as b:
        b.add_column(sa.Column("scopes", sa.String(2000), nullable=False, server_default="*"))
        b.add_column(sa.Column("replaced_by", sa.String(32), nullable=True))
    keys = sa.table("api_keys", sa.column("expires_at", sa.DateTime(timezone=True)))
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # Stored as text by SQLAlchemy's DateTime on SQLite.
        op.execute(
            "UPDATE api_keys SET expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+90 days') "
            "WHERE expires_at IS NULL"
        )
    else:
        op.execute(
            keys.update()
            .where(keys.c.expires_at.is_(None))
            .values(expires_at=sa.text("now() + interval '90 days'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as b:
        b.drop_column("replaced_by")
        b.drop_column("scopes")
