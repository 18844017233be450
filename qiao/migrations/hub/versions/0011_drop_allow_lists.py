"""Agreements replace the foundation's allow-lists: drop ``resource_clients``.

An allow-list entry said only "this client may call this resource"; an agreement says who,
what, which fields, how masked, why, how often and until when, and both organizations sign it
(docs/agreements.md). Entries are not converted: an allow-list carries none of those terms, so
each department applies (or subscribes) once after upgrading. Downgrading recreates the empty
table.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 10:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("resource_clients")


def downgrade() -> None:
    op.create_table(
        "resource_clients",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_resource_clients_resource_id_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resource_clients")),
        sa.UniqueConstraint("resource_id", "client", name=op.f("uq_resource_clients_resource_id")),
    )
