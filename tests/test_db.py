from sqlalchemy import inspect, text

from qiao.db import downgrade, make_engine, migrate


def test_migrations_up_and_down(db_url: str) -> None:
    for store, table in (("hub", "organizations"), ("node", "exchange_records")):
        migrate(store, db_url)
        eng = make_engine(db_url)
        assert table in inspect(eng).get_table_names()
        migrate(store, db_url)  # idempotent
        downgrade(store, db_url)
        assert table not in inspect(eng).get_table_names()
        eng.dispose()
        # The hub and node histories share a database here, so clear Alembic's marker.
        with make_engine(db_url).begin() as c:
            c.execute(text("DROP TABLE alembic_version"))


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_migrations_match_the_models(db_url: str) -> None:
    """Every table, column and index a model declares is what the migrations create, for
    the hub and the node alike (alembic's autogenerate comparison finds nothing to do)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import qiao.hub.app
    import qiao.node.app  # noqa: F401  (the apps import every module that declares tables)
    from qiao.db import HubBase, NodeBase

    for store, base in (("hub", HubBase), ("node", NodeBase)):
        migrate(store, db_url)
        eng = make_engine(db_url)
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), base.metadata)
        eng.dispose()
        assert [d for d in diff if not _is_alembic_bookkeeping(d)] == [], store
        downgrade(store, db_url)
        with make_engine(db_url).begin() as c:
            c.execute(text("DROP TABLE alembic_version"))


# The catalog's text search lives in objects the models cannot declare (SQLite FTS5 virtual
# tables, pg_trgm GIN indexes), created by migration 0006 and owned by qiao.catalog.search.
_HAND_MADE = (
    "alembic_version",
    "catalog_search",
    "catalog_grams",
    "ix_catalog_resources_search",
    "ix_catalog_resources_short_grams",
)


def _is_alembic_bookkeeping(diff: object) -> bool:
    return (
        isinstance(diff, tuple)
        and diff[0] in ("remove_table", "remove_index")
        and str(getattr(diff[1], "name", "")).startswith(_HAND_MADE)
    )
