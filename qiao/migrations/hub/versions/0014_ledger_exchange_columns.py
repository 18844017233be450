"""ledger: the exchange index carries who, what, when and why, for audit and the dashboard

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 12:40:00

The console's audit search and dashboard (docs/console.md) filter and count exchanges by
department, resource, end user, purpose and time; reading those out of a million JSON
entries is no search. The columns are copied from each entry (the entry stays the record)
and filled here for the rows already indexed.
"""

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

import qiao.db

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COLUMNS = (
    ("org", sa.String(length=18)),
    ("client", sa.String(length=200)),
    ("provider_org", sa.String(length=18)),
    ("resource", sa.String(length=64)),
    ("method", sa.String(length=16)),
    ("purpose", sa.String(length=200)),
    ("end_user", sa.String(length=200)),
    ("started_at", qiao.db.UTCDateTime(timezone=True)),
    ("duration_ms", sa.Float()),
    ("status", sa.Integer()),
)
INDEXES = (
    ("ix_ledger_exchanges_org_idx", ["org", "idx"]),
    ("ix_ledger_exchanges_xid_org_idx", ["exchange_id", "org", "idx"]),
    ("ix_ledger_exchanges_end_user_idx", ["end_user", "org", "idx"]),
    ("ix_ledger_exchanges_purpose_idx", ["purpose", "idx"]),
    ("ix_ledger_exchanges_purpose_org_idx", ["purpose", "org", "idx"]),
    ("ix_ledger_exchanges_resource_idx", ["provider_org", "resource", "idx"]),
    ("ix_ledger_exchanges_resource_org_idx", ["provider_org", "resource", "org", "idx"]),
    ("ix_ledger_exchanges_started_at", ["started_at", "org", "status", "duration_ms"]),
    ("ix_ledger_exchanges_org_started_at", ["org", "started_at", "status", "duration_ms"]),
)
BATCH = 5000


def _columns(entry: dict[str, Any]) -> dict[str, Any]:
    # As qiao.ledger.exchanges.indexed_columns at this revision (a migration keeps its own
    # copy: the module may change later, this step may not).
    out: dict[str, Any] = {"org": str(entry.get("org", ""))[:18] or None}
    for name, size in (
        ("client", 200),
        ("provider_org", 18),
        ("resource", 64),
        ("method", 16),
        ("purpose", 200),
        ("end_user", 200),
    ):
        value = entry.get(name)
        out[name] = value[:size] if isinstance(value, str) else None
    try:
        when = datetime.fromisoformat(str(entry.get("started_at")))
        out["started_at"] = when if when.tzinfo else when.replace(tzinfo=UTC)
    except ValueError:
        out["started_at"] = None
    for name, kind in (("duration_ms", float), ("status", int)):
        try:
            out[name] = kind(entry[name])
        except (KeyError, TypeError, ValueError):
            out[name] = None
    return out


def upgrade() -> None:
    with op.batch_alter_table("ledger_exchanges") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    for name, cols in INDEXES:
        op.create_index(name, "ledger_exchanges", cols, unique=False)
    bind = op.get_bind()
    meta = sa.MetaData()
    exchanges = sa.Table(
        "ledger_exchanges",
        meta,
        sa.Column("idx", sa.BigInteger, primary_key=True),
        *(sa.Column(n, k) for n, k in COLUMNS),
    )
    entries = sa.Table(
        "ledger_entries", meta, sa.Column("idx", sa.BigInteger), sa.Column("entry", sa.LargeBinary)
    )
    after = -1
    while True:
        rows = bind.execute(
            sa.select(entries.c.idx, entries.c.entry)
            .join(exchanges, exchanges.c.idx == entries.c.idx)
            .where(entries.c.idx > after)
            .order_by(entries.c.idx)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        updates = []
        for idx, raw in rows:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                updates.append({"b_idx": idx, **_columns(entry)})
        if updates:
            bind.execute(
                exchanges.update()
                .where(exchanges.c.idx == sa.bindparam("b_idx"))
                .values({n: sa.bindparam(n) for n, _k in COLUMNS}),
                updates,
            )
        after = rows[-1][0]


def downgrade() -> None:
    for name, _cols in INDEXES:
        op.drop_index(name, table_name="ledger_exchanges")
    with op.batch_alter_table("ledger_exchanges") as batch:
        for name, _kind in reversed(COLUMNS):
            batch.drop_column(name)
