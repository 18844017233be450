"""Sharing requests, agreements, their history and organizations' agreement keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 09:30:00
"""

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TS = qiao.db.UTCDateTime(timezone=True)


def _org(column: str, table: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        column,
        sa.String(18),
        sa.ForeignKey("organizations.code", name=f"fk_{table}_{column}_organizations"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "organization_agreement_keys",
        _org("org_code", "organization_agreement_keys"),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("org_code", name=op.f("pk_organization_agreement_keys")),
    )
    op.create_table(
        "sharing_requests",
        sa.Column("id", sa.String(20), nullable=False),
        _org("consumer_org", "sharing_requests"),
        sa.Column("applicant", sa.String(200), nullable=False),
        _org("provider_org", "sharing_requests"),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("resource_version", sa.Integer(), nullable=False),
        sa.Column("resource_sha256", sa.String(64), nullable=False),
        sa.Column("purposes", sa.Text(), nullable=False),
        sa.Column("purpose_text", sa.Text(), nullable=False),
        sa.Column("legal_basis", sa.Text(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("methods", sa.Text(), nullable=False),
        sa.Column("paths", sa.Text(), nullable=False),
        sa.Column("apps", sa.Text(), nullable=False),
        sa.Column("valid_days", sa.Integer(), nullable=False),
        sa.Column("daily_quota", sa.Integer(), nullable=True),
        sa.Column("rate_requests", sa.Integer(), nullable=True),
        sa.Column("rate_per_seconds", sa.Integer(), nullable=True),
        sa.Column("end_user_required", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("submitted_at", _TS, nullable=False),
        sa.Column("deadline", _TS, nullable=False),
        sa.Column("deadline_provisional", sa.Boolean(), nullable=False),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("agreement_id", sa.String(48), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sharing_requests")),
    )
    # The approver's inbox and the applicant's "mine", each filtered by status.
    op.create_index(
        "ix_sharing_requests_provider_org_status", "sharing_requests", ["provider_org", "status"]
    )
    op.create_index(
        "ix_sharing_requests_consumer_org_status", "sharing_requests", ["consumer_org", "status"]
    )
    op.create_table(
        "agreements",
        sa.Column("id", sa.String(48), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("provider_signature", sa.String(100), nullable=False),
        sa.Column("consumer_signature", sa.String(100), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=False),
        _org("provider_org", "agreements"),
        _org("consumer_org", "agreements"),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(20), nullable=False),
        sa.Column("renews", sa.String(48), nullable=False),
        sa.Column("valid_until", _TS, nullable=False),
        sa.Column("emergency_only", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("changed_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agreements")),
        sa.UniqueConstraint("sha256", name=op.f("uq_agreements_sha256")),
    )
    op.create_index(
        "ix_agreements_provider_org_resource", "agreements", ["provider_org", "resource"]
    )
    op.create_index("ix_agreements_consumer_org", "agreements", ["consumer_org"])
    # The global configuration leaves out the long expired: a range scan on valid_until.
    op.create_index("ix_agreements_valid_until", "agreements", ["valid_until"])
    op.create_table(
        "agreement_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("agreement_id", sa.String(48), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name=op.f("fk_agreement_events_agreement_id_agreements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agreement_events")),
    )
    op.create_index("ix_agreement_events_agreement_id", "agreement_events", ["agreement_id"])


def downgrade() -> None:
    op.drop_index("ix_agreement_events_agreement_id", table_name="agreement_events")
    op.drop_table("agreement_events")
    op.drop_index("ix_agreements_valid_until", table_name="agreements")
    op.drop_index("ix_agreements_consumer_org", table_name="agreements")
    op.drop_index("ix_agreements_provider_org_resource", table_name="agreements")
    op.drop_table("agreements")
    op.drop_index("ix_sharing_requests_consumer_org_status", table_name="sharing_requests")
    op.drop_index("ix_sharing_requests_provider_org_status", table_name="sharing_requests")
    op.drop_table("sharing_requests")
    op.drop_table("organization_agreement_keys")
