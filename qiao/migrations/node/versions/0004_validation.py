"""Validation at the boundary: no change to the node's tables.

An exchange refused for breaking the catalog's schema is recorded with its problem type
(``provider:invalid-response`` or ``client:invalid-request``) in the existing ``problem_type``
column; which fields and rules failed go to the caller in the problem and to the node's log,
not into the record (records travel to the ledger, and stay small and fixed in shape). The step
stays in the chain so that revision ids match across installations.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 06:20:00
"""

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
