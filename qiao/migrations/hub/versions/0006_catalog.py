"""The catalog: code lists, data elements, resources with immutable versions, search index.

Search (``qiao.catalog.search``) needs a substring index over ``search_text``: SQLite gets an
FTS5 table with the trigram tokenizer (SQLite ≥ 3.34), kept in step by triggers;
PostgreSQL gets a pg_trgm GIN index (the extension is "trusted" since PostgreSQL 13, so the
database owner may create it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 06:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_C18 = sa.String(18).with_variant(sa.String(18, collation="C"), "postgresql")
_C64 = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "catalog_code_lists",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("identifier", sa.String(64), nullable=False),
        sa.Column("owner_org", sa.String(18), sa.ForeignKey("organizations.code"), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("identifier"),
    )
    op.create_index("ix_catalog_code_lists_owner_org", "catalog_code_lists", ["owner_org"])
    op.create_table(
        "catalog_codes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "code_list_id",
            sa.Integer,
            sa.ForeignKey("catalog_code_lists.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("label_en", sa.String(200), nullable=False),
        sa.UniqueConstraint("code_list_id", "value"),
    )
    op.create_table(
        "catalog_data_elements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("identifier", sa.String(64), nullable=False),
        sa.Column("owner_org", sa.String(18), sa.ForeignKey("organizations.code"), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("code_list", sa.String(64), nullable=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("identifier"),
    )
    op.create_index("ix_catalog_data_elements_owner_org", "catalog_data_elements", ["owner_org"])
    op.create_index("ix_catalog_data_elements_code_list", "catalog_data_elements", ["code_list"])
    op.create_table(
        "catalog_resources",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "resource_id",
            sa.Integer,
            sa.ForeignKey("resources.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("org_code", _C18, nullable=False),
        sa.Column("code", _C64, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("provider_name", sa.String(200), nullable=False),
        sa.Column("sharing_type", sa.String(16), nullable=False),
        sa.Column("classification", sa.String(16), nullable=False),
        sa.Column("sharing_methods", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("search_text", sa.Text, nullable=False),
        sa.Column("short_grams", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("resource_id"),
        sa.UniqueConstraint("org_code", "code"),
    )
    op.create_index("ix_catalog_resources_order", "catalog_resources", ["org_code", "code"])
    for col in ("sharing_type", "classification", "status"):
        op.create_index(f"ix_catalog_resources_{col}", "catalog_resources", [col])
    op.create_table(
        "catalog_resource_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "catalog_resource_id",
            sa.Integer,
            sa.ForeignKey("catalog_resources.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("catalog_resource_id", "version"),
    )
    op.create_table(
        "catalog_element_uses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "version_id",
            sa.Integer,
            sa.ForeignKey("catalog_resource_versions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("element", sa.String(64), nullable=False),
        sa.UniqueConstraint("version_id", "element"),
    )
    op.create_index("ix_catalog_element_uses_element", "catalog_element_uses", ["element"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            "CREATE INDEX ix_catalog_resources_search_trgm ON catalog_resources "
            "USING gin (search_text gin_trgm_ops)"
        )
        op.execute(
            "CREATE INDEX ix_catalog_resources_short_grams ON catalog_resources "
            "USING gin (string_to_array(short_grams, ' '))"
        )
    else:
        # An external-content FTS5 table over catalog_resources.search_text; the triggers
        # keep it in step within the same transaction as every write.
        op.execute(
            "CREATE VIRTUAL TABLE catalog_search USING fts5(search_text, "
            "content='catalog_resources', content_rowid='id', "
            "tokenize='trigram case_sensitive 1')"
        )
        # Each 1- or 2-character gram is one unicode61 token (see qiao.catalog.search).
        op.execute(
            "CREATE VIRTUAL TABLE catalog_grams USING fts5(short_grams, "
            "content='catalog_resources', content_rowid='id', "
            "tokenize='unicode61 remove_diacritics 0')"
        )
        for table, column in (("catalog_search", "search_text"), ("catalog_grams", "short_grams")):
            op.execute(
                f"CREATE TRIGGER {table}_ai AFTER INSERT ON catalog_resources BEGIN "
                f"INSERT INTO {table}(rowid, {column}) VALUES (new.id, new.{column}); END"
            )
            op.execute(
                f"CREATE TRIGGER {table}_ad AFTER DELETE ON catalog_resources BEGIN "
                f"INSERT INTO {table}({table}, rowid, {column}) "
                f"VALUES ('delete', old.id, old.{column}); END"
            )
            op.execute(
                f"CREATE TRIGGER {table}_au AFTER UPDATE OF {column} ON catalog_resources BEGIN "
                f"INSERT INTO {table}({table}, rowid, {column}) "
                f"VALUES ('delete', old.id, old.{column}); "
                f"INSERT INTO {table}(rowid, {column}) VALUES (new.id, new.{column}); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_catalog_resources_short_grams")
        op.execute("DROP INDEX IF EXISTS ix_catalog_resources_search_trgm")
    else:
        for table in ("catalog_search", "catalog_grams"):
            for suffix in ("ai", "ad", "au"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_{suffix}")
            op.execute(f"DROP TABLE IF EXISTS {table}")
    op.drop_table("catalog_element_uses")
    op.drop_table("catalog_resource_versions")
    op.drop_table("catalog_resources")
    op.drop_table("catalog_data_elements")
    op.drop_table("catalog_codes")
    op.drop_table("catalog_code_lists")
